"""What a job means to a person, for its page: one sentence, its figures with their units, and
the links that come next (open the archive, browse it, see the comparison). The result dict a
job stores is for machines (the API and `--json` give it as is); this is for the admin."""

from dataclasses import dataclass, field

from django.urls import reverse
from django.utils.formats import number_format

from borgapp import naming
from borgapp.models import Archive, Job
from borgapp.units import human_bytes

LABELS = {
    "archive_name": "Archive", "nfiles": "Files", "original_size": "Original size",
    "compressed_size": "Compressed", "deduplicated_size": "New data (deduplicated)",
    "compression_ratio": "Compression ratio", "deduplication_ratio": "Deduplication ratio",
    "duration": "borg's run time", "target_path": "Restored into", "files": "Files",
    "items": "Entries read", "changes": "Changes", "other": "Compared with",
    "files_in_archive": "Files in the archive", "sampled": "Files sampled",
    "bytes": "Bytes", "archives": "Archives", "total_size": "All archives, original",
    "unique_compressed_size": "Size on disk", "mount_point": "Mount point",
    "location": "Location", "encryption_mode": "Encryption", "databases": "Databases dumped",
    "restored_into": "Restored into", "path": "Path in the archive",
    "target": "Target", "policy": "Policy", "paths": "Paths selected", "format": "Format",
}  # fmt: skip
HIDDEN = {"archive_id", "repository_id", "unique_chunks", "total_chunks", "unique_size",
          "total_compressed_size", "message", "sha256", "globs", "rules", "problems",
          "limit", "preview"}  # fmt: skip


@dataclass
class Summary:
    sentence: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)


def count(value) -> str:
    return number_format(value, force_grouping=True) if value is not None else "–"


def many(value, noun: str, plural: str = "") -> str:
    """'1 file', '1,200 files'."""
    return f"{count(value)} {noun if value == 1 else plural or noun + 's'}"


def shown(key: str, value) -> str:
    """One result value with its unit."""
    if value is None:
        return "–"
    if key.endswith("size") or key == "bytes":
        return human_bytes(value)
    if key.endswith("ratio"):
        return f"{value:,.1f}×"
    if key == "duration":
        return f"{value:,.1f} s"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return count(value)
    if isinstance(value, list):
        return count(len(value))
    return str(value)


def facts_of(result: dict) -> list[tuple[str, str]]:
    return [
        (LABELS.get(key, key.replace("_", " ").capitalize()), shown(key, value))
        for key, value in result.items()
        if key not in HIDDEN and not isinstance(value, dict)
    ]


def summarize(job: Job) -> Summary:
    """The summary of an ended job (an empty one while it runs)."""
    if not job.is_finished:
        return Summary()
    result = job.result or {}
    summary = Summary(facts=facts_of(result))
    if job.status in (Job.Status.FAILED, Job.Status.INTERRUPTED, Job.Status.CANCELLED):
        summary.sentence = f"{job.get_kind_display()} {job.status}: nothing after it changed."
        if job.status == Job.Status.FAILED and job.error_message:
            summary.sentence = f"{job.get_kind_display()} failed. {job.error_message}"
        return summary
    if job.status == Job.Status.SKIPPED:
        summary.sentence = job.error_message or "Skipped."
        return summary
    archive = _archive(job, result.get("archive_name"))
    tell = SENTENCES.get(job.kind)
    summary.sentence = tell(result) if tell else f"{job.get_kind_display()} finished."
    if job.status == Job.Status.WARNING:
        summary.sentence += f" With a warning: {job.error_message or 'see borg’s lines below'}."
    if archive is not None:
        summary.links += _archive_links(job, archive, result)
    if job.kind == Job.Kind.EXTRACT and result.get("target_path"):
        summary.links.insert(
            0, ("Open the restored folder", reverse("admin:borgapp_job_restored", args=[job.pk]))
        )
    if job.kind in (Job.Kind.INIT, Job.Kind.IMPORT) and job.repository_id:
        summary.links.append(
            ("Back up now", reverse("admin:borgapp_repository_backup", args=[job.repository_id]))
        )
    return summary


def _archive(job: Job, name: str | None) -> Archive | None:
    if not name or not job.repository_id:
        return None
    return Archive.objects.filter(repository_id=job.repository_id, name=name).first()


def _archive_links(job: Job, archive: Archive, result: dict) -> list[tuple[str, str]]:
    links = [
        ("Open the archive", reverse("admin:borgapp_archive_change", args=[archive.pk])),
        ("Browse its files", reverse("admin:borgapp_archive_contents", args=[archive.pk])),
    ]
    diff_url = reverse("admin:borgapp_archive_diff", args=[archive.pk])
    if job.kind == Job.Kind.DIFF:
        other = _archive(job, result.get("other"))
        if other is not None:
            links.insert(0, ("See the comparison", f"{diff_url}?other={other.pk}"))
        return links
    previous = _previous(archive)
    if job.kind == Job.Kind.BACKUP and previous is not None:
        links.append(("Compare with the previous archive", f"{diff_url}?other={previous.pk}"))
    return links


def _previous(archive: Archive) -> Archive | None:
    """The archive of the same set made before this one."""
    prefix = naming.set_of(archive.name)
    if prefix is None or archive.start is None:
        return None
    earlier = archive.repository.archives.filter(
        name__startswith=f"{prefix}-", is_checkpoint=False, start__lt=archive.start
    )
    return next((a for a in earlier.order_by("-start")[:20] if naming.in_set(a.name, prefix)), None)


def expected_bytes(job: Job) -> int | None:
    """For a running backup: the original size of the previous archive of its set, so the
    page can estimate how far it is (None when there is none to go by)."""
    if job.kind != Job.Kind.BACKUP or not job.repository_id:
        return None
    prefix = (job.params or {}).get("prefix")
    if not prefix:
        return None
    candidates = (
        Archive.objects.filter(
            repository_id=job.repository_id, name__startswith=f"{prefix}-", is_checkpoint=False
        )
        .exclude(original_size=None)
        .order_by("-start")
        .values_list("name", "original_size")[:20]
    )
    # `docs-old-...` starts with `docs-` too: only the set's own names count
    return next((size for name, size in candidates if naming.in_set(name, prefix)), None)


def _backup(r: dict) -> str:
    size, took = (
        shown("original_size", r.get("original_size")),
        shown("duration", r.get("duration")),
    )
    new = shown("deduplicated_size", r.get("deduplicated_size"))
    dumped = r.get("databases") or []
    databases = f" with {many(len(dumped), 'database')} dumped in" if dumped else ""
    return (
        f"Backed up {many(r.get('nfiles'), 'file')} ({size}){databases} into "
        f"{r.get('archive_name')} in {took}; {new} of it was new."
    )


def _prune(r: dict) -> str:
    pruned, kept = len(r.get("pruned", [])), len(r.get("kept", []))
    if r.get("dry_run"):
        return f"Preview: pruning would remove {count(pruned)} archive(s) and keep {count(kept)}."
    compacted = " Space was reclaimed (compact)." if r.get("compacted") else ""
    return f"Removed {count(pruned)} archive(s), kept {count(kept)}.{compacted}"


def _restore(r: dict) -> str:
    def n(name: str) -> str:
        return count((r.get(name) or {}).get("count", 0))

    done = f"{n('created')} created, {n('replaced')} replaced, {n('kept')} kept"
    rest = f"{n('left_alone')} left alone, {n('blocked')} blocked"
    if r.get("preview"):
        return f"Preview of a restore into {r.get('target')}: would be {done}; {rest}."
    return f"Restored into {r.get('target')}: {done}; {rest}."


SENTENCES = {
    Job.Kind.BACKUP: _backup,
    Job.Kind.PRUNE: _prune,
    Job.Kind.EXTRACT: lambda r: (
        f"Restored {many(r.get('files'), 'file')} of {r.get('archive_name')} into "
        f"{r.get('target_path')}."
    ),
    Job.Kind.CHECK: lambda r: (
        "borg check found no problem"
        + (" (every data chunk was read and verified)." if r.get("verify_data") else ".")
    ),
    Job.Kind.COMPACT: lambda r: (
        "The repository was compacted." + (f" {r['note']}" if r.get("note") else "")
    ),
    Job.Kind.CONTENTS: lambda r: (
        f"Read {many(r.get('items'), 'entry', 'entries')} of {r.get('archive_name')}."
    ),
    Job.Kind.DIFF: lambda r: (
        f"Compared {r.get('archive_name')} with {r.get('other')}: "
        f"{many(r.get('changes'), 'change')}."
    ),
    Job.Kind.VERIFY_RESTORE: lambda r: (
        f"Restored {many(r.get('sampled'), 'sampled file')} of {r.get('archive_name')}; every one "
        "matched the archive and the source."
        + (
            f" {many(len(r['databases']), 'database dump')} restored into a scratch database "
            "and counted: no table missing."
            if r.get("databases")
            else ""
        )
    ),
    Job.Kind.RESTORE_DATABASE: lambda r: (
        f"Restored {r.get('source')}/{r.get('database')} of {r.get('archive_name')} into "
        f"{r.get('restored_into')}."
    ),
    Job.Kind.DOWNLOAD: lambda r: (
        f"Sent {human_bytes(r.get('bytes'))} of {r.get('archive_name')} "
        f"({many(len(r.get('paths') or []), 'path')}, as {r.get('format')})."
    ),
    Job.Kind.RESTORE: lambda r: _restore(r),
    Job.Kind.INIT: lambda r: "The repository is ready for its first backup.",
    Job.Kind.IMPORT: lambda r: (
        f"The repository is ready: {many(r.get('archives'), 'archive')} found."
    ),
}
