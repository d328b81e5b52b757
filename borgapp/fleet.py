"""The fleet: hosts whose own agents run their jobs (issue 15).

An admin adds a host and gets a one-time enrollment token (shown once, kept only as a hash,
expiring). On the host, the agent exchanges it for a credential of its own (kept 0600 there,
only its hash here). The agent connects out to the center and asks for its host's next job;
the answer is the one place a job's passphrase travels. It runs borg there through the same
door (`borgapp.borg`), reports progress at most once a second (and learns of a cancel in the
answer), and reports the outcome, which is recorded here as a job run on the center would be.
Revoking a host ends its credential at once.
"""

import hashlib
import json
import re
import secrets
import shlex
import time
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from borgapp import audit, inplace, jobs, naming, operations, relay, validation
from borgapp.errors import Conflict, OperationError
from borgapp.models import DatabaseSource, Host, Job
from borgapp.places import Places
from borgapp.reconcile import LOST

# Progress an agent may report: each field's type and its bound (characters, or largest value).
PROGRESS_FIELDS = {
    "progress_bytes": (int, 2**62), "progress_files": (int, 2**62),
    "progress_percent": ((int, float), 100.0),
    "progress_path": (str, 4000), "progress_message": (str, 500),
}  # fmt: skip
MAX_RESULT = 64 * 1024  # bytes of JSON an agent's failure report may leave on the job
OUTCOMES = {"succeeded": Job.Status.SUCCEEDED, "warning": Job.Status.WARNING,
            "failed": Job.Status.FAILED, "cancelled": Job.Status.CANCELLED,
            "interrupted": Job.Status.INTERRUPTED}  # fmt: skip
HANDED_PARAMS = {
    Job.Kind.BACKUP: ("sources", "excludes", "compression", "one_file_system",
                      "checkpoint_interval", "comment"),
    Job.Kind.EXTRACT: ("target", "paths", "strip_components"),
    Job.Kind.DOWNLOAD: ("paths",),
    Job.Kind.RESTORE: ("target", "paths", "policy", "preview"),
    Job.Kind.RESTORE_DATABASE: ("database", "into", "force"),
    Job.Kind.VERIFY_RESTORE: ("prefix", "sample_files", "sample_percent", "sample_max_bytes"),
}  # fmt: skip
SEEN_EVERY = 10.0  # seconds between writes of a host's last_seen
CANCEL_REASONS = {"client_gone": "The client left before the download's end."}
RELAY_CHUNK = 1 << 20  # bytes of an agent's upload passed on at once


class NoSuchJob(Exception):
    """Not a running job of this host (whoever's it is: the agent is told no more)."""


class NotAuthorized(Exception):
    """A token or credential that opens nothing (the agent API answers 401, saying no more)."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- hosts and their secrets ------------------------------------------------------------------


def add_host(name: str) -> tuple[Host, str]:
    """A new host waiting for its agent, and its enrollment token (shown once)."""
    validation.validate_name(name, "Host name")
    if Host.objects.filter(name=name).exists():
        raise Conflict(f"A host named {name!r} exists already.")
    host = Host.objects.create(name=name)
    token = issue_token(host)
    return host, token


def issue_token(host: Host) -> str:
    """A new one-time enrollment token for the host (a re-enrollment ends its credential)."""
    token = secrets.token_urlsafe(32)
    Host.objects.filter(pk=host.pk).update(
        token_hash=digest(token),
        token_expires=timezone.now() + timedelta(seconds=settings.HOST_TOKEN_TTL),
        credential_hash="",
        state=Host.State.PENDING,
    )
    host.refresh_from_db()
    audit.record("host_token", host.name, outcome="success")
    return token


def revoke(host: Host) -> None:
    """End the host's access now: its credential and any token stop working."""
    Host.objects.filter(pk=host.pk).update(
        state=Host.State.REVOKED, credential_hash="", token_hash="", token_expires=None
    )
    host.refresh_from_db()
    audit.record("host_revoke", host.name, outcome="success")


SSH_KEY_RE = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]{68}(?:==?)?(?: [\w.@-]{0,100})?$")


def authorized_keys_line(host: Host, location: str) -> str:
    """The line for the repository server's authorized_keys that lets the host's agent only
    append to this one repository: it can add archives, and what it deletes or prunes stays
    recoverable until the center's own key compacts (see the README's Fleet section)."""
    if not host.ssh_public_key:
        raise validation.InvalidInput(f"Host {host.name} has sent no ssh key (enroll it again).")
    match = validation.SSH_RE.match(validation.validate_location(location))
    if match is None:
        raise validation.InvalidInput(f"{location} is not an ssh:// repository.")
    path = match["path"]
    if path.startswith(("/./", "/~/")):
        # borg serve reads these relative to the account's home, where the forced command
        # runs; its --restrict-to-repository takes a plain path, so it gets the relative one
        path = path[3:]
    elif path.startswith("/~"):
        raise validation.InvalidInput(
            f"{location}: name the repository by an absolute path, or relative to the "
            "account's home (/./PATH or /~/PATH), for its authorized_keys line."
        )
    command = f"borg serve --append-only --restrict-to-repository {shlex.quote(path)}"
    return f'command="{command}",restrict {host.ssh_public_key}'


def enroll(token: str, *, address: str, agent_version: str, borg_version: str,
           ssh_public_key: str = ""):  # fmt: skip
    """Exchange a valid enrollment token for the agent's credential: (host, credential)."""
    if not isinstance(token, str) or not token:
        raise NotAuthorized
    with transaction.atomic():
        host = Host.objects.filter(token_hash=digest(token)).first()
        if host is None or host.state == Host.State.REVOKED:
            raise NotAuthorized
        if host.token_expires is None or host.token_expires < timezone.now():
            raise NotAuthorized
        credential = secrets.token_urlsafe(32)
        # one use: the update only succeeds while the token is still the host's
        taken = Host.objects.filter(pk=host.pk, token_hash=digest(token)).update(
            token_hash="",
            token_expires=None,
            credential_hash=digest(credential),
            state=Host.State.ACTIVE,
            last_seen=timezone.now(),
            address=address[:64],
            agent_version=str(agent_version)[:40],
            borg_version=str(borg_version)[:40],
            ssh_public_key=ssh_public_key if SSH_KEY_RE.match(ssh_public_key or "") else "",
        )
        if not taken:
            raise NotAuthorized
    host.refresh_from_db()
    audit.record("host_enroll", host.name, outcome="success", actor=f"agent:{host.name}")
    return host, credential


def authenticate(credential: str, address: str = "") -> Host:
    """The active host this credential belongs to (its last_seen kept fresh)."""
    if not isinstance(credential, str) or not credential:
        raise NotAuthorized
    host = Host.objects.filter(credential_hash=digest(credential)).first()
    if host is None or host.state != Host.State.ACTIVE:
        raise NotAuthorized
    now = timezone.now()
    if host.last_seen is None or (now - host.last_seen).total_seconds() >= SEEN_EVERY:
        Host.objects.filter(pk=host.pk).update(last_seen=now, address=address[:64])
    return host


# --- handing jobs out ---------------------------------------------------------------------------


# Agents one web process lets wait for a job at once: a long poll holds a thread, and the admin
# and the API must keep theirs. The others are told to ask again shortly.
waiters = Places("AGENT_POLL_WAITERS")


def next_job(host: Host, wait: float) -> Job | None:
    """The host's next due job, claimed (its repository's lease taken for the agent), waiting
    up to `wait` seconds for one; None when there is none."""
    deadline = time.monotonic() + wait
    waiting = wait > 0 and waiters.take()
    try:
        while True:
            job = _claim_one(host)
            if job is not None or not waiting or time.monotonic() >= deadline:
                return job
            time.sleep(settings.AGENT_POLL_INTERVAL)
    finally:
        if waiting:
            waiters.give_back()


def park_key(host: Host) -> str:
    """What a waiting poll of this host waits on in the web server (opscenter/serving.py)."""
    return f"host:{host.pk}"


def ready_keys(keys: set[str]) -> set[str]:
    """Of the waiting polls' keys, those whose host has a job due now: one query for all the
    agents a web process holds waiting (the server asks every PARKING_INTERVAL)."""
    ids = {int(key[5:]) for key in keys if key.startswith("host:") and key[5:].isdigit()}
    due = _due(ids).values_list("host_id", flat=True).distinct()
    return {f"host:{pk}" for pk in due}


def _due(host_ids):
    """The queued jobs of these hosts whose time has come."""
    return Job.objects.filter(host_id__in=host_ids, status=Job.Status.QUEUED).exclude(
        not_before__gt=timezone.now()
    )


def _claim_one(host: Host) -> Job | None:
    due = _due([host.pk])
    owner = {"worker_host": f"agent:{host.name}", "worker_pid": None, "worker_started": None}
    for job in due.order_by("created_at", "id")[:10]:
        if jobs.claim(job, owner=owner):
            return job
    return None


def hand_out(job: Job) -> dict | None:
    """The claimed job as its agent gets it (`handout`), or None when it cannot run after
    all (its database source moved, no archive to verify): then it ends failed, saying why."""
    try:
        return handout(job)
    except (OperationError, validation.InvalidInput) as exc:
        code = getattr(exc, "code", "invalid_input")
        jobs.end(job, Job.Status.FAILED, error_code=code, error_message=str(exc))
        return None


def handout(job: Job) -> dict:
    """What the agent needs to run the job: the only answer that carries its passphrase, and
    the passwords of the job's database sources (all of them on this host)."""
    p = job.params
    repo = job.repository
    if job.kind == Job.Kind.BACKUP:
        name = p.get("archive") or naming.archive_name_for(p.get("prefix") or "backup")
        Job.objects.filter(pk=job.pk).update(archive_name=name)
    elif job.kind == Job.Kind.VERIFY_RESTORE:
        newest = operations.newest_of_set(repo, p.get("prefix") or "")
        if newest is None:
            raise OperationError(f"No archive named {p.get('prefix')}-<time> in {repo.name} to "
                                 "verify yet.", "not_found")  # fmt: skip
        name = newest.name
        Job.objects.filter(pk=job.pk).update(archive_name=name)
    else:
        name = job.archive_name
    return {
        "id": job.pk,
        "kind": job.kind,
        "repository": {"name": repo.name, "location": repo.location},
        "archive": name,
        "params": {key: p.get(key) for key in HANDED_PARAMS[job.kind]},
        "passphrase": repo.get_passphrase(),
        "databases": [source.spec().handout() for source in _sources_of(job)],
        "lock_wait": settings.BORG_LOCK_WAIT,
        "deadline": settings.JOB_DEADLINE,
    }


def _sources_of(job: Job) -> list[DatabaseSource]:
    """The database sources the job's agent needs: those a backup dumps or a restore writes
    (each still on this host, as the job was checked when asked for), or for a
    verify-restore every source of the host (a dump of any may be in the archive)."""
    on_host = DatabaseSource.objects.filter(agent_host=job.host)
    if job.kind == Job.Kind.VERIFY_RESTORE:
        return list(on_host)
    names = job.params.get("databases") or [] if job.kind == Job.Kind.BACKUP else []
    if job.kind == Job.Kind.RESTORE_DATABASE:
        names = [str(job.params.get("database") or "").split("/")[0]]
    found = on_host.in_bulk(names, field_name="name")
    for name in names:
        if name not in found:
            raise OperationError(f"Database source {name} is no longer on host {job.host.name} "
                                 "(it was moved or removed since the job was asked for).",
                                 "invalid_input")  # fmt: skip
    return [found[name] for name in names]


def running_job(host: Host, job_id) -> Job:
    """The host's own running job with this id, or one marked lost while its agent was out
    of touch (its late report is still recorded, not repeated). Any other: not found."""
    job = Job.objects.filter(pk=job_id, host=host).first()
    lost = job is not None and job.status == Job.Status.INTERRUPTED and job.error_code == LOST
    if job is None or not (job.status == Job.Status.RUNNING or lost):
        raise NoSuchJob(job_id)
    return job


def progress(job: Job, fields: dict) -> bool:
    """Write what the agent reported (at most once a second, the agent's part); True when a
    cancel was asked for, or when the job was marked lost meanwhile (its lease may be
    another job's by now: borg must stop)."""
    if job.status != Job.Status.RUNNING:
        return True
    update = {}
    for key, (kind, limit) in PROGRESS_FIELDS.items():
        value = fields.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            continue  # what an agent sends is checked like any input: a wrong type is dropped
        update[key] = value[:limit] if isinstance(value, str) else min(max(value, 0), limit)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now(), **update)
    return Job.objects.filter(pk=job.pk, cancel_requested=True).exists()


def finish(job: Job, report: dict) -> Job:
    """Record the outcome the agent reported, as if the job had run here: a backup's archive
    goes into the catalog from borg's own JSON, then `jobs.end` (lease, events, audit)."""
    outcome = report.get("outcome")
    status = OUTCOMES.get(outcome if isinstance(outcome, str) else "", Job.Status.FAILED)
    tail = "\n".join(str(line) for line in _listed(report, "tail"))[-8000:]
    result, message, code = {}, str(report.get("error") or "")[:2000], ""
    if status in Job.OK and job.kind == Job.Kind.BACKUP:
        created = report.get("created")
        try:
            if not isinstance(created, dict) or not isinstance(created.get("archive"), dict):
                raise ValueError("no archive in the report")
            made_on = (_text(report.get("hostname"), 255) or job.host.name,
                       _text(report.get("username"), 64) or "")  # fmt: skip
            result = operations.record_backup(job.repository, job.archive_name, created,
                                              job.params.get("comment", ""), made_on)  # fmt: skip
            if job.params.get("databases"):  # the dumps in the archive, as the agent made them
                result["databases"] = _small({"d": report.get("databases")}).get("d") or []
        except (TypeError, ValueError, AttributeError, DatabaseError) as exc:
            # a report that cannot be read is the agent's failure, never the center's 500
            status, code = Job.Status.FAILED, "bad_report"
            message = f"The agent's report could not be recorded ({exc}); run a sync."[:2000]
            report = {}
    elif status in Job.OK and job.kind == Job.Kind.DOWNLOAD:  # bytes borg's tar held
        sent = report.get("bytes")
        result = {"archive_name": job.archive_name, "paths": job.params.get("paths"),
                  "format": job.params.get("format"),
                  "bytes": sent if isinstance(sent, int) else None}  # fmt: skip
    elif status in Job.OK and job.kind == Job.Kind.RESTORE:  # what was (or would be) done
        p = job.params
        result = {"archive_name": job.archive_name, "target": p.get("target"),
                  "policy": p.get("policy"), "preview": p.get("preview"), "paths": p.get("paths"),
                  **_restore_report(report.get("report"))}  # fmt: skip
    elif status in Job.OK and job.kind in (Job.Kind.RESTORE_DATABASE, Job.Kind.VERIFY_RESTORE):
        result = {"archive_name": job.archive_name, **_small(report.get("result"))}
    elif status in Job.OK:  # an extract: where, and how many files (the agent counted)
        files = report.get("files")
        result = {"archive_name": job.archive_name, "target_path": job.params.get("target"),
                  "files": files if isinstance(files, int) else None}  # fmt: skip
    if status == Job.Status.WARNING:
        message = "; ".join(map(str, _listed(report, "warnings")))[:2000] or message
    if status == Job.Status.CANCELLED and job.error_code:
        # the center asked for the stop and said why (a download's client left): its reason
        code, message = job.error_code, CANCEL_REASONS.get(job.error_code, message)
    if status not in Job.OK and not code:
        code = str(report.get("code") or status)[:40]
        result = _small(report.get("result"))
    jobs.end(job, status, only_from=job.status, result=result, error_code=code,
             error_message=message, log_tail=tail)  # fmt: skip
    job.refresh_from_db()
    return job


class ClientGone(Exception):
    """The client of a relayed download left: the agent must stop borg."""


def relay_upload(job: Job, upload, wait: float = 5.0) -> int | None:
    """Pass what the agent uploads for a download to the client that waits for it (in this
    or another web process of this server), as it arrives. None: nobody waits for it."""
    deadline = time.monotonic() + wait
    while (conn := relay.connect(job.pk)) is None:  # the client's side may be a moment late
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)
    sent = 0
    with conn:
        while data := upload.read(RELAY_CHUNK):
            try:
                conn.sendall(data)
            except OSError:
                raise ClientGone from None
            sent += len(data)
    return sent


def _restore_report(found) -> dict:
    """A restore's report as the agent sent it, kept only in the shape the pages read."""
    found, kept = _small(found), {}
    for category in inplace.CATEGORIES:
        part = found.get(category)
        if not isinstance(part, dict) or not isinstance(part.get("count"), int):
            continue
        items = [
            {"path": str(item.get("path", ""))[:4000],
             **({"reason": str(item["reason"])[:500]} if item.get("reason") else {})}
            for item in _listed(part, "items")
            if isinstance(item, dict)
        ]  # fmt: skip
        more = part.get("more") if isinstance(part.get("more"), int) else 0
        kept[category] = {"count": part["count"], "items": items, "more": more}
    if isinstance(found.get("limit"), int):
        kept["limit"] = found["limit"]
    return kept


def _small(found) -> dict:
    """A dict an agent reported, kept whole if it is small enough for a job's row."""
    if isinstance(found, dict) and len(json.dumps(found, default=str)) <= MAX_RESULT:
        return found
    return {}


def _text(value, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _listed(report: dict, key: str) -> list:
    value = report.get(key)
    return value if isinstance(value, list) else []
