"""Schedules run through django-q2: each Schedule row has exactly one django-q2 schedule (its
mirror) that fires `tasks.run_schedule`; a run makes one Job per repository through `intake`.

- No run at creation: the mirror's first `next_run` is the next slot (REL-10).
- django-q2 runs with `catch_up=False`, so after downtime a due schedule fires once (REL-10).
- A repository whose previous run of this schedule is still queued or running gets a
  `skipped` Job with the reason instead of a second one (REL-10).
- Per-schedule time zones: django-q2 computes cron times in one zone for all schedules, so
  the run itself writes the next slot, computed in the schedule's own zone, to its mirror.
"""

from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from borgapp import intake, jobs, params, validation
from borgapp.errors import Conflict, InvalidInput
from borgapp.models import Job, Schedule

TASK = "borgapp.tasks.run_schedule"
ACTIVE = (Job.Status.QUEUED, Job.Status.RUNNING)


def mirror_name(schedule_id: int) -> str:
    return f"opscenter-schedule-{schedule_id}"


def cron_of(schedule: Schedule) -> str:
    return validation.CRON_KEYWORDS.get(schedule.cron.strip().lower(), schedule.cron)


def next_slot(schedule: Schedule, after: datetime | None = None) -> datetime:
    """The first cron slot after `after` (and after any pause), in the schedule's zone."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    base = after or timezone.now()
    if schedule.paused_until and schedule.paused_until > base:
        base = schedule.paused_until
    local = base.astimezone(ZoneInfo(schedule.timezone))
    return croniter(cron_of(schedule), local).get_next(datetime).astimezone(UTC)


def upcoming(schedule: Schedule, count: int = 5) -> list[datetime]:
    """The next `count` runs, in the schedule's own time zone."""
    from zoneinfo import ZoneInfo

    runs, after = [], None
    for _ in range(count):
        after = next_slot(schedule, after)
        runs.append(after.astimezone(ZoneInfo(schedule.timezone)))
    return runs


def mirror(schedule: Schedule, reschedule: bool) -> bool:
    """Make the schedule's one django-q2 mirror match it. `reschedule` recomputes the next
    run (after a change of timing); otherwise a pending run keeps its time. Returns whether
    anything had to change."""
    from django_q.models import Schedule as QSchedule

    wanted = {
        "func": TASK,
        "args": str(schedule.pk),
        "schedule_type": QSchedule.CRON,
        "cron": cron_of(schedule),
        "repeats": -1 if schedule.enabled else 0,
    }
    rows = list(QSchedule.objects.filter(name=mirror_name(schedule.pk)).order_by("pk"))
    changed = False
    for extra in rows[1:]:  # exactly one mirror
        extra.delete()
        changed = True
    row = rows[0] if rows else None
    if row is None:
        row = QSchedule.objects.create(name=mirror_name(schedule.pk), **wanted)
        changed = reschedule = True
    elif any(getattr(row, key) != value for key, value in wanted.items()):
        QSchedule.objects.filter(pk=row.pk).update(**wanted)
        changed = True
    if reschedule or row.next_run is None:
        # Set after create: django-q2's save() computes its own first run in its own zone.
        QSchedule.objects.filter(pk=row.pk).update(next_run=next_slot(schedule))
        changed = True
    return changed


def on_save(sender, instance: Schedule, created: bool, raw: bool = False, **kwargs) -> None:
    if raw:  # loaddata
        return
    reschedule = created or getattr(instance, "_loaded_timing", None) != instance.timing_key()
    mirror(instance, reschedule)
    instance._loaded_timing = instance.timing_key()


def on_delete(sender, instance: Schedule, **kwargs) -> None:
    forget(instance.pk)


def forget(schedule_id: int) -> None:
    from django_q.models import Schedule as QSchedule

    QSchedule.objects.filter(name=mirror_name(schedule_id)).delete()


def next_run(schedule: Schedule) -> datetime | None:
    from django_q.models import Schedule as QSchedule

    if not schedule.enabled:
        return None
    row = QSchedule.objects.filter(name=mirror_name(schedule.pk)).only("next_run").first()
    return row.next_run if row else None


def sync() -> dict:
    """Repair the mirrors: one per Schedule, none for a Schedule that no longer exists.
    A pending run keeps its time (a repair must not swallow a run that is due)."""
    from django_q.models import Schedule as QSchedule

    schedules = list(Schedule.objects.all())
    names = {mirror_name(s.pk) for s in schedules}
    stray = QSchedule.objects.filter(func=TASK).exclude(name__in=names)
    removed = stray.count()
    stray.delete()
    repaired = sum(1 for s in schedules if mirror(s, reschedule=False))
    return {"schedules": len(schedules), "repaired": repaired, "removed": removed}


def out_of_sync() -> list[str]:
    """What `sync` would repair, for the start-up check."""
    from django_q.models import Schedule as QSchedule

    problems = []
    for schedule in Schedule.objects.all():
        rows = list(QSchedule.objects.filter(name=mirror_name(schedule.pk)))
        if len(rows) != 1:
            problems.append(f"{schedule.name}: {len(rows)} django-q2 schedules instead of 1")
        elif rows[0].cron != cron_of(schedule) or rows[0].func != TASK:
            problems.append(f"{schedule.name}: its django-q2 schedule differs")
    names = [mirror_name(pk) for pk in Schedule.objects.values_list("pk", flat=True)]
    stray = QSchedule.objects.filter(func=TASK).exclude(name__in=names).count()
    if stray:
        problems.append(f"{stray} django-q2 schedules for schedules that no longer exist")
    return problems


# --- runs ------------------------------------------------------------------------------------


def params_for(schedule: Schedule) -> tuple[str, dict]:
    """The Job kind and parameters one run of this schedule uses (no secret: stored)."""
    op = schedule.operation
    if op == Schedule.Operation.BACKUP:
        return Job.Kind.BACKUP, params.Backup(
            sources=list(schedule.source_paths),
            excludes=list(schedule.exclude_patterns),
            prefix=schedule.archive_prefix,
            compression=schedule.compression,
            one_file_system=schedule.one_file_system,
            checkpoint_interval=schedule.checkpoint_interval,
            comment=schedule.comment,
            databases=[d.name for d in schedule.databases.order_by("name")] if schedule.pk else [],
        ).as_dict()
    if op == Schedule.Operation.PRUNE:
        policy = schedule.retention_policy
        return Job.Kind.PRUNE, params.Prune(
            prefix=schedule.archive_prefix,
            policy=policy.name if policy else "",
            compact=schedule.compact_after_prune,
        ).as_dict()
    if op == Schedule.Operation.COMPACT:
        return Job.Kind.COMPACT, {}
    if op == Schedule.Operation.CHECK:
        return Job.Kind.CHECK, params.Check(
            scope=schedule.check_scope,
            verify_data=schedule.verify_data,
            max_duration=schedule.max_duration,
            last=schedule.check_last,
        ).as_dict()
    return Job.Kind.VERIFY_RESTORE, params.VerifyRestore(
        prefix=schedule.archive_prefix,
        sample_files=schedule.sample_files,
        sample_percent=schedule.sample_percent,
        sample_max_bytes=schedule.sample_max_bytes,
    ).as_dict()


def record_skip(schedule: Schedule, repository, kind: str, trigger: str, reason: str, user=None):
    """A run that does not happen is recorded as a skipped Job with the reason (and told)."""
    job = jobs.create(kind, repository, trigger=trigger, schedule=schedule, user=user)
    jobs.end(
        job,
        Job.Status.SKIPPED,
        only_from=Job.Status.QUEUED,
        error_code="skipped",
        error_message=reason,
    )
    return job


def start_runs(
    schedule: Schedule, *, trigger: str, user=None, inline: bool = False, echo=None
) -> list[Job]:
    """One run of a schedule: a Job per repository (in parallel across repositories on the
    workers), or a recorded skip where the previous run is still queued or running."""
    kind, values = params_for(schedule)
    made = []
    for repository in schedule.repositories.order_by("name"):
        busy = (
            Job.objects.filter(schedule=schedule, repository=repository, status__in=ACTIVE)
            .order_by("pk")
            .first()
        )
        if busy is not None:
            reason = f"The previous run (job {busy.pk}) is still {busy.status}."
            made.append(record_skip(schedule, repository, kind, trigger, reason, user))
            continue
        try:
            job = intake.start(
                kind,
                repository,
                values,
                trigger=trigger,
                user=user,
                schedule=schedule,
                inline=inline and schedule.host_id is None,
                echo=echo,
                audit_refusal=False,  # the skip below is audited
                host=schedule.host,  # a host's backups run on its agent
            )
        except (InvalidInput, Conflict) as exc:
            job = record_skip(schedule, repository, kind, trigger, str(exc), user)
        made.append(job)
    return made


def start_dry_run(schedule: Schedule, *, trigger: str, user=None, inline=False) -> list[Job]:
    """A prune schedule's dry run: per repository, what its policy would remove and keep."""
    if schedule.operation != Schedule.Operation.PRUNE:
        raise validation.InvalidInput("Only a prune schedule has a dry run.")
    _, values = params_for(schedule)
    return [
        intake.start(
            Job.Kind.PRUNE,
            repository,
            {**values, "dry_run": True},
            trigger=trigger,
            user=user,
            schedule=schedule,
            inline=inline,
        )
        for repository in schedule.repositories.order_by("name")
    ]


def run_due(schedule_id: int) -> dict:
    """The django-q2 task: the mirror fired. Writes the next slot (in the schedule's zone)
    to the mirror, then starts the runs unless the schedule is off or paused."""
    from django_q.models import Schedule as QSchedule

    schedule = Schedule.objects.filter(pk=schedule_id).first()
    if schedule is None:
        forget(schedule_id)
        return {"skipped": "the schedule no longer exists"}
    QSchedule.objects.filter(name=mirror_name(schedule.pk)).update(next_run=next_slot(schedule))
    if not schedule.enabled:
        return {"skipped": "disabled"}
    if schedule.paused_until and schedule.paused_until > timezone.now():
        return {"skipped": f"paused until {schedule.paused_until.isoformat()}"}
    with transaction.atomic():
        made = start_runs(schedule, trigger=Job.Trigger.SCHEDULE)
    return {"jobs": [job.pk for job in made]}
