"""Settings for Ops Center. Runs with no environment at all (SQLite under ./var).

Every setting can come from the environment or from an optional `.env` file in the project
root; the environment wins.
"""

import secrets
from pathlib import Path

import environ
from cryptography.fernet import Fernet

from opscenter.filemodes import create_private, sqlite_path
from opscenter.keyfiles import read_or_create

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DATA_DIR = Path(env.str("OPSCENTER_DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or read_or_create(
    DATA_DIR / "secret_key", lambda: secrets.token_urlsafe(50)
)
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# Fernet keys for passphrases at rest (SEC-02): the first key encrypts, all of them decrypt.
# Without BORG_ENCRYPTION_KEY a key is generated once into the data directory and kept.
BORG_ENCRYPTION_KEYS = env.list("BORG_ENCRYPTION_KEY", default=[]) or [
    read_or_create(DATA_DIR / "fernet.key", lambda: Fernet.generate_key().decode())
]

INSTALLED_APPS = [
    "borgapp.apps.OpsAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from here (no CDN)
    "django_q",
    "borgapp",
]

MIDDLEWARE = [
    "borgapp.security_headers.ContentSecurityPolicyMiddleware",
    "borgapp.proxy.TrustedProxyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "borgapp.bad_request.DataErrorMiddleware",
    "borgapp.audit.AuditMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# Shared by every web process (the failed sign-in counter lives here): a file cache in the
# data directory by default, CACHE_URL (redis://..., memcache://...) for larger installations.
CACHES = {
    "default": env.cache("CACHE_URL", default=f"filecache://{DATA_DIR / 'cache'}"),
    # django-q2's cluster statistics, rewritten every half second: kept in memory.
    "qstats": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}

# Reverse proxies whose X-Forwarded-For is believed (addresses or networks, e.g.
# 127.0.0.1,10.0.0.0/8); empty: REMOTE_ADDR is the client.
TRUSTED_PROXIES = env.list("OPSCENTER_TRUSTED_PROXIES", default=[])

ROOT_URLCONF = "opscenter.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "opscenter.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}"),
}
# Keep a process's connection between requests (checked before reuse): opening one, with its
# PRAGMAs, cost about 8 ms of every API request.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("OPSCENTER_DB_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # REL-15: WAL, IMMEDIATE transactions and a busy timeout so that workers, the web
    # process and the CLI writing progress at once never see "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            # the WAL file is cut back to 64 MiB after a checkpoint: a long write (the file
            # index of a large archive) had left it at hundreds of MiB for good
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
            "PRAGMA journal_size_limit=67108864;",
        }
    )
    DATABASES["default"].setdefault("TEST", {})["NAME"] = str(DATA_DIR / "test.sqlite3")
    # 0600 from the start, whatever the umask (its -wal and -shm files follow its mode)
    if sqlite_path(DATABASES["default"]):
        create_private(sqlite_path(DATABASES["default"]))

if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's iterators read a server-side cursor, which PostgreSQL plans for its first
    # tenth of rows: a name search chose to read every name (90 ms for 300,000) over the
    # trigram index (2 ms). Outside a transaction such a cursor is made whole at once
    # (WITH HOLD) anyway, so plan it for all its rows. No JIT: it compiled a folder's page
    # of the file index, whose rows the planner overestimates, for 170 ms of a 6 ms query.
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options["options"] = (
        f"{_options.get('options', '')} -c cursor_tuple_fraction=1 -c jit=off".strip()
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True
FORMAT_MODULE_PATH = ["opscenter.formats"]  # dates with their zone, one format (formats/en)

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("OPSCENTER_STATIC_ROOT", default=str(DATA_DIR / "static")))
WHITENOISE_AUTOREFRESH = DEBUG
try:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
except OSError:  # a read-only image: collectstatic made it at build time
    pass
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- borg -------------------------------------------------------------------------------

# One BORG_BASE_DIR for web, workers and CLI so borg's caches stay warm (PERF-04).
BORG_BASE_DIR = Path(env.str("BORG_BASE_DIR", default=str(DATA_DIR / "borg")))
_venv_borg = BASE_DIR / ".venv" / "bin" / "borg"
BORG_BINARY = env.str("BORG_BINARY", default=str(_venv_borg) if _venv_borg.exists() else "borg")
BORG_RSH = env.str(
    "BORG_RSH",
    default="ssh -oBatchMode=yes -oServerAliveInterval=10 -oServerAliveCountMax=30",
)
BORG_REMOTE_PATH = env.str("BORG_REMOTE_PATH", default="")
BORG_LOCK_WAIT = env.int("BORG_LOCK_WAIT", default=600)


def _roots(name, default):
    value = env.str(name, default="")
    if value:
        return [Path(p).resolve() for p in value.split(":") if p]
    path = DATA_DIR / default  # the default root lives in the data directory: create it
    path.mkdir(exist_ok=True, mode=0o700)
    return [path]


REPOSITORY_ROOTS = _roots("OPSCENTER_REPOSITORY_ROOTS", "repos")
RESTORE_ROOTS = _roots("OPSCENTER_RESTORE_ROOTS", "restore")
MOUNT_ROOTS = _roots("OPSCENTER_MOUNT_ROOTS", "mnt")
# Restores in place write over live folders: only under these roots, none by default (opt-in).
# The app's own data directory is refused at start-up (borgapp.checks).
_inplace = env.str("OPSCENTER_INPLACE_ROOTS", default="")
INPLACE_ROOTS = [Path(p).resolve() for p in _inplace.split(":") if p]
# Downloads stream from borg in the web process: at most this many at once per process
# (each holds a thread and its repository's lease), and how long one waits for a busy lease.
DOWNLOAD_SLOTS = env.int("OPSCENTER_DOWNLOAD_SLOTS", default=4)
DOWNLOAD_LEASE_WAIT = env.float("OPSCENTER_DOWNLOAD_LEASE_WAIT", default=5.0)
# The fleet (issue 15): an enrollment token's life (seconds); how long an agent's poll waits
# for a job, and how often the waiting polls' hosts are checked for one. Served as `make run`
# serves (opscenter/serving.py), a waiting poll holds no thread, and one query per interval
# checks all of a process's waiting hosts at once (PARKING_READY). Under any other server a
# poll waits in a thread: at most AGENT_POLL_WAITERS per process, the others ask again later.
HOST_TOKEN_TTL = env.int("OPSCENTER_HOST_TOKEN_TTL", default=24 * 3600)
AGENT_POLL_WAIT = env.float("OPSCENTER_AGENT_POLL_WAIT", default=20.0)
AGENT_POLL_INTERVAL = env.float("OPSCENTER_AGENT_POLL_INTERVAL", default=0.25)
AGENT_POLL_WAITERS = env.int("OPSCENTER_AGENT_POLL_WAITERS", default=4)
PARKING_READY = "borgapp.fleet.ready_keys"
PARKING_INTERVAL = AGENT_POLL_INTERVAL
# An agent's upload of a download it runs: read as it arrives and relayed to the client that
# waits for it (borgapp.relay), never held whole in memory.
STREAMED_UPLOADS = r"^/agent/v1/jobs/\d+/stream$"
# How long a download that runs on a host waits for the host's agent to start sending.
DOWNLOAD_AGENT_WAIT = env.float("OPSCENTER_DOWNLOAD_AGENT_WAIT", default=60.0)
# A host's running job whose agent has not reported for this long is marked lost (its lease
# freed; a late report is still recorded), and a host silent this long raises an alert.
AGENT_JOB_GRACE = env.int("OPSCENTER_AGENT_JOB_GRACE", default=120)
HOST_SILENT_AFTER = env.int("OPSCENTER_HOST_SILENT_AFTER", default=900)

# Signal ladder for cancel and deadlines (REL-04): seconds after SIGINT, then after SIGTERM.
BORG_GRACE_SIGINT = env.float("BORG_GRACE_SIGINT", default=60.0)
BORG_GRACE_SIGTERM = env.float("BORG_GRACE_SIGTERM", default=15.0)
# Longest a single job may run before the signal ladder stops it.
JOB_DEADLINE = env.int("OPSCENTER_JOB_DEADLINE", default=24 * 3600)
# How long the integration guide's routes wait for their job before answering 202.
SEED_WAIT = env.float("OPSCENTER_SEED_WAIT", default=300.0)
# requests of one web process that may wait for their job at once; the next answers 202
SEED_WAITERS = env.int("OPSCENTER_SEED_WAITERS", default=4)
# Adding a repository in the admin waits this long for borg's answer (a wrong passphrase is
# then an error on the form); a slower init or import goes on as a job. Shares SEED_WAITERS.
ADMIN_REGISTER_WAIT = env.float("OPSCENTER_ADMIN_REGISTER_WAIT", default=30.0)
# An exported repository key waits this many seconds for the admin who asked for it.
KEY_DOWNLOAD_TTL = env.int("OPSCENTER_KEY_DOWNLOAD_TTL", default=900)
# File listings (archive contents and diffs) read from borg: the rows they may hold together
# (about 360 bytes each), and the listing jobs one user or one repository may have waiting.
LISTING_MAX_ROWS = env.int("OPSCENTER_LISTING_MAX_ROWS", default=5_000_000)
# The file index (search, history): each new archive is indexed in the background after the
# backup or sync that brought it (borgapp.fileindex).
FILE_INDEX = env.bool("OPSCENTER_FILE_INDEX", default=True)
LISTING_JOBS_PER_USER = env.int("OPSCENTER_LISTING_JOBS_PER_USER", default=2)
LISTING_JOBS_PER_REPOSITORY = env.int("OPSCENTER_LISTING_JOBS_PER_REPOSITORY", default=4)
# A repository whose last successful backup is older than this shows red (the guide: 25 h).
BACKUP_OVERDUE_HOURS = env.int("OPSCENTER_BACKUP_OVERDUE_HOURS", default=25)
# Alert defaults (the guide's thresholds); each repository may override them in the admin.
ALERT_SUCCESS_RATE_MIN = env.float("OPSCENTER_ALERT_SUCCESS_RATE_MIN", default=99.0)
ALERT_SUCCESS_WINDOW_DAYS = env.int("OPSCENTER_ALERT_SUCCESS_WINDOW_DAYS", default=30)
# A rate means nothing over a handful of jobs, and one failure must not fire for the whole
# window: the rate is judged from this many ended jobs, and a run of this many successes
# (the newest jobs) clears it.
ALERT_SUCCESS_MIN_JOBS = env.int("OPSCENTER_ALERT_SUCCESS_MIN_JOBS", default=10)
ALERT_SUCCESS_CLEARING_RUN = env.int("OPSCENTER_ALERT_SUCCESS_CLEARING_RUN", default=3)
ALERT_DEDUP_MIN = env.float("OPSCENTER_ALERT_DEDUP_MIN", default=1.5)
# Deduplication shows only from the second backup of the same data on: judged from this many.
ALERT_DEDUP_MIN_ARCHIVES = env.int("OPSCENTER_ALERT_DEDUP_MIN_ARCHIVES", default=3)
ALERT_GROWTH_FACTOR = env.float("OPSCENTER_ALERT_GROWTH_FACTOR", default=2.0)
ALERT_CHECK_MAX_AGE_DAYS = env.int("OPSCENTER_ALERT_CHECK_MAX_AGE_DAYS", default=8)
# While the worker is silent, web probes evaluate alerts in a background thread (so a slow
# channel never slows a probe); off, they evaluate inside the request.
ALERT_WATCH_THREAD = env.bool("OPSCENTER_ALERT_WATCH_THREAD", default=True)
ALERT_JOB_OVERRUN_FACTOR = env.float("OPSCENTER_ALERT_JOB_OVERRUN_FACTOR", default=3.0)
# /metrics: a bearer token, a viewer's API token, or one of these client addresses.
METRICS_TOKEN = env.str("OPSCENTER_METRICS_TOKEN", default="")
METRICS_ALLOW = env.list("OPSCENTER_METRICS_ALLOW", default=["127.0.0.1", "::1"])
# Notifications: Django's email settings from one URL (smtp://user:pass@host:587, or
# consolemail:// to print), and the webhook timeout.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="opscenter@localhost")
NOTIFY_TIMEOUT = env.float("OPSCENTER_NOTIFY_TIMEOUT", default=10.0)
# Webhooks, Apprise URLs and pings never reach loopback, link-local, private or reserved
# addresses, except these host names and networks (e.g. ntfy.lan,10.0.5.0/24).
NOTIFY_ALLOW_HOSTS = env.list("OPSCENTER_NOTIFY_ALLOW_HOSTS", default=[])
# A running job whose heartbeat is older than this is treated as dead (REL-14).
JOB_STALE_AFTER = env.int("OPSCENTER_JOB_STALE_AFTER", default=600)
# Scheduled jobs that fail for a passing reason (connection closed, a foreign lock) are
# retried up to this many times, waiting RETRY_WAIT, then twice that, and so on (seconds).
SCHEDULE_RETRIES = env.int("OPSCENTER_SCHEDULE_RETRIES", default=3)
SCHEDULE_RETRY_WAIT = env.int("OPSCENTER_SCHEDULE_RETRY_WAIT", default=60)

# --- django-q2 (REL-09) ---------------------------------------------------------------------

# The queue between the doors and the workers: the database itself (django-q2's ORM broker)
# by default; OPSCENTER_REDIS_URL (redis://host:6379/0) puts it in Redis for a fleet.
REDIS_URL = env.str("OPSCENTER_REDIS_URL", default="")
Q_CLUSTER = {
    "name": "opscenter",
    **({"redis": REDIS_URL} if REDIS_URL else {"orm": "default"}),
    "workers": env.int("OPSCENTER_WORKERS", default=2),
    # The job's own deadline stops borg with the signal ladder first; django-q2's timeout
    # (which kills the worker and would leave borg running) is only a last resort after it.
    "timeout": JOB_DEADLINE + 3600,
    # The ORM broker hands a task out again once `retry` passes, even while it runs: make it
    # longer than any job plus its wait in the queue. Redis hands a task out once (no receipt,
    # `retry` unused): if its worker dies before the job starts, `reconcile` queues it again.
    "retry": JOB_DEADLINE + 12 * 3600,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 250,
    "poll": env.float("OPSCENTER_Q_POLL", default=0.5),
    "label": "Django Q2",
    "cache": "qstats",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "borgapp.logredact.RedactSecrets"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # first, so that a missing or wrong credential answers 401 with WWW-Authenticate
        "borgapp.api.auth.ThrottledTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["borgapp.api.permissions.RolePermission"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "borgapp.api.errors.handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Ops Center for BorgBackup API",
    "DESCRIPTION": (
        "Repositories, archives, jobs, retention policies and schedules. Long operations "
        "answer 202 with a Job; watch it at its URL. Every ratio is original size over "
        "stored size: higher is better."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "borgapp.api.schema.add_error_responses",
    ],
}
