"""The catalog: Archive rows and a repository's stored figures, written from what borg
printed (REL-13 in docs/requirements.md: the rows equal `borg list` after every sync). Reads
are served from these rows; only the operations call borg to refresh them.
"""

import os
import pwd
import socket
from datetime import UTC

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from borgapp import validation
from borgapp.models import Archive, Repository


def parse_time(value):
    """A time borg printed, as an aware datetime (None for none)."""
    if not value:
        return None
    parsed = parse_datetime(value)
    if parsed is not None and timezone.is_naive(parsed):
        # borg prints local time without an offset; it runs with TZ=UTC (borg.environment).
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def apply_listing(repo: Repository, listed: list[dict]) -> dict:
    now = timezone.now()
    existing = {a.name: a for a in repo.archives.all()}
    seen, new, changed = set(), [], []
    for item in listed:
        name = item.get("name") or item.get("archive")
        if not name:
            continue
        seen.add(name)
        values = {
            "borg_id": item.get("id", ""),
            "start": parse_time(item.get("start") or item.get("time")),
            "end": parse_time(item.get("end")),
            "hostname": item.get("hostname", "") or "",
            "username": item.get("username", "") or "",
            "comment": item.get("comment", "") or "",
            "is_checkpoint": bool(borg_checkpoint(name)),
        }
        if values["start"] and values["end"]:
            values["duration"] = (values["end"] - values["start"]).total_seconds()
        archive = existing.get(name)
        if archive is None:
            new.append(Archive(repository=repo, name=name, synced_at=now, **values))
            continue
        if any(getattr(archive, key) != value for key, value in values.items()):
            for key, value in values.items():
                setattr(archive, key, value)
            archive.synced_at = now
            changed.append(archive)
    gone = [a.pk for name, a in existing.items() if name not in seen]
    with transaction.atomic():
        Archive.objects.bulk_create(new, batch_size=500)
        if changed:
            Archive.objects.bulk_update(
                changed,
                [
                    "borg_id",
                    "start",
                    "end",
                    "duration",
                    "hostname",
                    "username",
                    "comment",
                    "is_checkpoint",
                    "synced_at",
                ],
                batch_size=500,
            )
        if gone:
            Archive.objects.filter(pk__in=gone).delete()
        Repository.objects.filter(pk=repo.pk).update(catalog_synced_at=now, catalog_stale=False)
    return {"archives": len(seen), "added": len(new), "updated": len(changed), "removed": len(gone)}


def borg_checkpoint(name: str) -> bool:
    return validation.CHECKPOINT_SUFFIX_RE.search(name) is not None


def store_repository_stats(repo: Repository, info: dict) -> None:
    stats = (info.get("cache") or {}).get("stats") or {}
    repository = info.get("repository") or {}
    encryption = (info.get("encryption") or {}).get("mode")
    fields = {
        "total_size": stats.get("total_size"),
        "total_compressed_size": stats.get("total_csize"),
        "unique_size": stats.get("unique_size"),
        "unique_compressed_size": stats.get("unique_csize"),
        "total_chunks": stats.get("total_chunks"),
        "unique_chunks": stats.get("total_unique_chunks"),
        "stats_updated_at": timezone.now(),
    }
    if repository.get("id"):
        fields["borg_id"] = repository["id"]
    if encryption:
        fields["encryption"] = encryption
    Repository.objects.filter(pk=repo.pk).update(**fields)
    for key, value in fields.items():
        setattr(repo, key, value)


def repository_summary(repo: Repository) -> dict:
    return {
        "repository_id": repo.borg_id,
        "location": repo.location,
        "encryption_mode": repo.encryption,
        "total_size": repo.total_size,
        "total_compressed_size": repo.total_compressed_size,
        "unique_size": repo.unique_size,
        "unique_compressed_size": repo.unique_compressed_size,
        "unique_chunks": repo.unique_chunks,
        "total_chunks": repo.total_chunks,
        "deduplication_ratio": repo.deduplication_ratio,
        "archives": repo.archives.filter(is_checkpoint=False).count(),
    }


def store_archive_stats(repo: Repository, archives: list[dict]) -> None:
    by_name = {a.name: a for a in repo.archives.all()}
    changed = []
    for item in archives:
        archive = by_name.get(item.get("name"))
        stats = item.get("stats") or {}
        if archive is None or not stats:
            continue
        archive.original_size = stats.get("original_size")
        archive.compressed_size = stats.get("compressed_size")
        archive.deduplicated_size = stats.get("deduplicated_size")
        archive.nfiles = stats.get("nfiles")
        archive.duration = item.get("duration", archive.duration)
        changed.append(archive)
    Archive.objects.bulk_update(
        changed,
        ["original_size", "compressed_size", "deduplicated_size", "nfiles", "duration"],
        batch_size=500,
    )


def record_created(repo: Repository, archive: dict, *, comment: str, made_on=None) -> str:
    """Add the archive a successful `borg create --json` reported, and return its name.

    The catalog delta of a successful create is exact: one archive added, and borg has
    already dropped the checkpoints of this run. Applying it here saves a `borg list` (~0.7 s
    per backup on 2 cores, PERF-03); failed runs and every other writing operation
    resynchronise from `borg list` instead. `made_on`: (hostname, username) of an agent's
    host, whose report says where borg ran."""
    name = archive["name"]
    stats = archive.get("stats") or {}
    with transaction.atomic():
        Archive.objects.update_or_create(
            repository=repo,
            name=name,
            defaults={
                "borg_id": archive.get("id", ""),
                "start": parse_time(archive.get("start")),
                "end": parse_time(archive.get("end")),
                "duration": archive.get("duration"),
                "original_size": stats.get("original_size"),
                "compressed_size": stats.get("compressed_size"),
                "deduplicated_size": stats.get("deduplicated_size"),
                "nfiles": stats.get("nfiles"),
                "comment": comment,
                # borg's JSON does not say where it ran: here, or on an agent's host
                "hostname": made_on[0] if made_on else socket.gethostname(),
                "username": made_on[1] if made_on else _username(),
                "created_by_app": True,
                "is_checkpoint": False,
            },
        )
        Archive.objects.filter(repository=repo, name__startswith=f"{name}.checkpoint").delete()
    return name


def _username() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
