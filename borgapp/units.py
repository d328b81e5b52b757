"""Numbers for people: byte counts as borg prints them (powers of 1000)."""


def human_bytes(value) -> str:
    """1234567 -> '1.2 MB' (powers of 1000, as borg prints them)."""
    if value in (None, ""):
        return "–"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(size) < 1000 or unit == "PB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(value)
