"""gunicorn settings shared by `make run`, the container and the tests.

The access log shows the path without its query string: the integration guide's callers may
still put passphrases there (SEC-03).
"""

import os

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_WORKERS", os.environ.get("WEB_CONCURRENCY", "2")))
# The guide's routes wait for their job (OPSCENTER_SEED_WAIT): give them the time.
timeout = int(float(os.environ.get("OPSCENTER_SEED_WAIT", "300"))) + 30
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
