"""One way to write a moment everywhere in the admin: ISO order, 24 hours, and the zone
(TIME_ZONE, UTC by default), so that no time on a page is ambiguous. Django's English
formats ("Dec. 2, 2026, 4:41 p.m.", no zone) would otherwise stand beside our own."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
DATETIME_INPUT_FORMATS = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]
DATE_INPUT_FORMATS = ["%Y-%m-%d"]
