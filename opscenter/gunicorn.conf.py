"""gunicorn settings shared by `make run`, the container and the tests.

Each worker process serves with hypercorn's event loop and runs Django in a pool of threads
(opscenter/serving.py says why): a slow or silent client costs a coroutine, never a thread,
and is closed once its time is up.

The access log shows the path without its query string: the integration guide's callers may
still put passphrases there (SEC-03).
"""

import os

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
worker_class = "opscenter.serving.HypercornWorker"
workers = int(os.environ.get("WEB_WORKERS", os.environ.get("WEB_CONCURRENCY", "2")))
# Requests each process runs at once (Django's threads); more wait in the event loop, holding
# no thread. The guide's routes hold one while they wait for their job (OPSCENTER_SEED_WAIT,
# at most OPSCENTER_SEED_WAITERS of them per process).
threads = int(os.environ.get("WEB_THREADS", "16"))
# Seconds a client has to send a request's headers (from connecting, or from the previous
# answer on a kept-alive connection), then as long again for its body; also how long an idle
# connection stays open.
keepalive = int(os.environ.get("WEB_CLIENT_TIMEOUT", "10"))
# The event loop's heartbeat, not a request limit: requests run in threads and may take as
# long as they need (the guide's routes wait up to OPSCENTER_SEED_WAIT).
timeout = 30
# On stop or restart, requests still running get this long to finish.
graceful_timeout = 20
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
