"""System checks run at start-up: borg present and recent enough (SEC-12), django-q2 settings
safe for long jobs (REL-09), data directory writable."""

import os

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from borgapp import borg, proxy, scheduling, validation
from borgapp.operations import borg_config
from opscenter.filemodes import sqlite_path


@register(Tags.compatibility)
def borg_version_check(app_configs=None, **kwargs):
    try:
        found = borg.version(borg_config())
    except borg.BorgError as exc:
        return [Error(f"borg is not usable: {exc}", hint="Set BORG_BINARY.", id="borgapp.E001")]
    text = ".".join(map(str, found))
    if found < borg.MIN_VERSION:
        return [
            Error(
                f"borg {text} is too old: 1.2.5 or newer is required (CVE-2023-36811).",
                hint="Install borgbackup 1.4.5 (make install does this).",
                id="borgapp.E002",
            )
        ]
    if found < borg.SAFE_RESTORE_VERSION:
        return [
            Warning(
                f"borg {text} is older than 1.4.5: restores of archives this app did not make "
                "are refused (CVE-2026-62268).",
                id="borgapp.W001",
            )
        ]
    return []


@register(Tags.compatibility)
def django_q_check(app_configs=None, **kwargs):
    q = getattr(settings, "Q_CLUSTER", {})
    problems = []
    deadline = settings.JOB_DEADLINE
    if (q.get("retry") or 0) <= deadline:
        problems.append(
            f"Q_CLUSTER['retry'] ({q.get('retry')}) must exceed the job deadline ({deadline}s): "
            "the ORM broker hands a task out again after `retry` seconds, even while it runs."
        )
    if q.get("max_attempts") != 1:
        problems.append("Q_CLUSTER['max_attempts'] must be 1 (the app decides about retries).")
    if q.get("ack_failures") is not True:
        problems.append("Q_CLUSTER['ack_failures'] must be True (else failed jobs run again).")
    if q.get("catch_up") is not False:
        problems.append("Q_CLUSTER['catch_up'] must be False (else missed slots all replay).")
    ladder = settings.BORG_GRACE_SIGINT + settings.BORG_GRACE_SIGTERM
    if q.get("timeout") is not None and q["timeout"] <= deadline + ladder:
        problems.append(
            f"Q_CLUSTER['timeout'] ({q['timeout']}) must exceed the job deadline plus the "
            f"signal ladder ({deadline + ladder:.0f}s): django-q2's timeout kills the worker "
            "and leaves borg running."
        )
    if q.get("timeout") and (q.get("retry") or 0) <= q["timeout"]:
        problems.append("Q_CLUSTER['retry'] must exceed Q_CLUSTER['timeout'].")
    return [Error(text, id="borgapp.E010") for text in problems]


@register(Tags.compatibility)
def data_dir_check(app_configs=None, **kwargs):
    data_dir = settings.DATA_DIR
    if not os.access(data_dir, os.W_OK):
        return [Error(f"The data directory {data_dir} is not writable.", id="borgapp.E020")]
    return []


@register(Tags.security)
def inplace_roots_check(app_configs=None, **kwargs):
    """A restore in place must never be able to write over the app's own data, borg's base
    folder or a repository: an in-place root that holds one of them, or lies inside one, is
    refused at start-up."""
    protected = [settings.DATA_DIR, settings.BORG_BASE_DIR, *settings.REPOSITORY_ROOTS]
    problems = []
    for root in settings.INPLACE_ROOTS:
        for folder in protected:
            folder = os.path.realpath(folder)
            if validation.is_within(root, folder) or validation.is_within(folder, root):
                problems.append(
                    Error(
                        f"The in-place root {root} overlaps {folder}, where this app keeps its "
                        "own data or repositories.",
                        hint="Choose OPSCENTER_INPLACE_ROOTS that hold only data to restore.",
                        id="borgapp.E030",
                    )
                )
    return problems


@register(Tags.security)
def trusted_proxies_check(app_configs=None, **kwargs):
    import ipaddress

    errors = []
    for entry in settings.TRUSTED_PROXIES:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            errors.append(
                Error(
                    f"OPSCENTER_TRUSTED_PROXIES: {entry!r} is not an address or a network.",
                    hint="Use addresses or networks such as 127.0.0.1,10.0.0.0/8.",
                    id="borgapp.E040",
                )
            )
    return errors


@register(Tags.database)
def schedules_mirrored_check(app_configs=None, databases=None, **kwargs):
    """Run by `check --database default` and `migrate`: each Schedule has its one mirror."""
    if not databases:
        return []
    from django.db.utils import DatabaseError

    try:
        problems = scheduling.out_of_sync()
    except DatabaseError:  # tables not there yet (before the first migrate)
        return []
    return [
        Warning(problem, hint="Run manage.py sync_schedules.", id="borgapp.W030")
        for problem in problems
    ]


@register(Tags.security)
def unlisted_proxy_check(app_configs=None, **kwargs):
    """A reverse proxy on this host that is not a trusted proxy (seen by the web app in the
    last month): every client then shares its loopback address."""
    import datetime

    try:
        seen = proxy.unlisted_proxy_seen()
    except Exception:  # an unreachable cache must not stop a start-up
        return []
    if seen is None:
        return []
    when = datetime.datetime.fromtimestamp(seen["at"], datetime.UTC).strftime("%Y-%m-%d %H:%M")
    peer = seen["peer"]
    return [
        Warning(
            f"Requests from {peer} carried X-Forwarded-For (last noted {when} UTC), but {peer} "
            "is not in OPSCENTER_TRUSTED_PROXIES: every client behind that proxy shares one "
            "address for the sign-in throttle and the audit trail, and /metrics refuses "
            "address-based scrapes through it.",
            hint=f"Set OPSCENTER_TRUSTED_PROXIES={peer} (the proxy's address).",
            id="borgapp.W041",
        )
    ]


@register(Tags.security)
def private_data_check(app_configs=None, **kwargs):
    """The data directory and the SQLite database (password hashes, API tokens, encrypted
    passphrases) and the key files in it: a warning for each that group or others may read or
    write (issue 10, finding 14)."""
    import stat

    data_dir = settings.DATA_DIR
    paths = [data_dir, data_dir / "secret_key", data_dir / "fernet.key"]
    database = sqlite_path(settings.DATABASES["default"])
    if database:
        paths += [database, f"{database}-wal", f"{database}-shm"]
    problems = []
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if mode & 0o066:
            private = "700" if stat.S_ISDIR(mode) else "600"
            problems.append(
                Warning(
                    f"{path} has mode {stat.S_IMODE(mode):o}: other users of this machine may "
                    "read or change it, and the data directory holds the database (API tokens, "
                    "password hashes) and the keys of the passphrases.",
                    hint=f"chmod {private} {path} (the app makes its own files private).",
                    id="borgapp.W050",
                )
            )
    return problems
