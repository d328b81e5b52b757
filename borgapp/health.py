"""Repository health for the dashboard (and later metrics): a colour and the reasons for it,
computed for every repository at once from the catalog and the job table (no borg)."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Max, OuterRef, Q, Subquery
from django.utils import timezone

from borgapp.models import Alert, Archive, Job, Repository

GREEN, AMBER, RED = "green", "amber", "red"
BAD_ENDINGS = (Job.Status.FAILED, Job.Status.INTERRUPTED)


@dataclass
class Health:
    repository: Repository
    colour: str = GREEN
    reasons: list[str] = field(default_factory=list)
    last_backup: datetime | None = None
    archive_count: int = 0
    last_job: Job | None = None
    running: Job | None = None
    headline: str = "ok"  # the reason that set the colour

    levels: list[int] = field(default_factory=list)  # of the reasons given by `worse`

    def worse(self, colour: str, reason: str) -> None:
        """Note a reason; the worst ones come first (a cut line shows what matters most)."""
        order = [GREEN, AMBER, RED]
        level = order.index(colour)
        if level > order.index(self.colour):
            self.colour, self.headline = colour, reason
        at = sum(1 for other in self.levels if other >= level)
        self.levels.insert(at, level)
        self.reasons.insert(at, reason)

    @property
    def backup_age(self) -> timedelta | None:
        return timezone.now() - self.last_backup if self.last_backup else None


def overdue_after(repo: Repository) -> timedelta:
    """How old a repository's last backup may get: its own threshold, else the default (25 h).
    The dashboard, the admin list and the alerts all ask here."""
    hours = repo.overdue_hours if repo.overdue_hours is not None else settings.BACKUP_OVERDUE_HOURS
    return timedelta(hours=hours)


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if hours < 1:
        return f"{max(delta.total_seconds() // 60, 1):.0f} min"
    return f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.0f} days"


def repositories(now: datetime | None = None) -> list[Health]:
    now = now or timezone.now()
    repos = list(
        Repository.objects.annotate(
            last_job_id=Subquery(last_finished_job().values("pk")[:1]),
            firing_alert=Subquery(firing_alert().values("reason")[:1]),
        )
        .select_related("lease_job")
        .order_by("name")
    )
    # one grouped pass over the archives (an index-only scan), not a join per repository
    summary = {
        row["repository_id"]: row
        # `IN (False)` and COUNT(*): SQLite then scans the covering index without a test per
        # row ("NOT is_checkpoint", as Django writes `=False`, halves the speed).
        for row in Archive.objects.filter(is_checkpoint__in=[False])
        .values("repository_id")
        .annotate(count=Count("*"), newest=Max("start"))
        .order_by()
    }
    for repo in repos:
        row = summary.get(repo.pk, {})
        repo.archive_count, repo.last_backup = row.get("count", 0), row.get("newest")
    last_jobs = Job.objects.in_bulk([r.last_job_id for r in repos if r.last_job_id])
    result = []
    for repo in repos:
        health = judge(
            repo, repo.last_backup, last_jobs.get(repo.last_job_id), now, repo.firing_alert
        )
        health.archive_count = repo.archive_count
        if repo.lease_job and repo.lease_job.status == Job.Status.RUNNING:
            health.running = repo.lease_job
        result.append(health)
    return result


def last_finished_job():
    """A subquery of the newest ended (not skipped) job of the outer repository row."""
    return (
        Job.objects.filter(repository=OuterRef("pk"), status__in=Job.FINISHED)
        .exclude(status=Job.Status.SKIPPED)
        .order_by("-finished_at", "-pk")
    )


def firing_alert():
    """A subquery of the outer repository row's firing alerts, newest first."""
    return Alert.objects.filter(repository=OuterRef("pk"), state=Alert.State.FIRING).order_by(
        "-last_seen", "-pk"
    )


def judge(
    repo: Repository, last_backup, last_job: Job | None, now: datetime, alert: str | None = None
) -> Health:
    """The colour rules, written once: the dashboard and the repository list ask here.
    `alert` is the reason of a firing alert of this repository: never green beside it."""
    health = Health(repo, last_backup=last_backup, last_job=last_job)
    if alert:
        health.worse(AMBER, f"alert: {alert}")
    if repo.state != Repository.State.READY:
        health.worse(AMBER, "not initialized or imported yet")
    if last_backup is None:
        health.worse(RED, "no backup yet")
    elif now - last_backup > overdue_after(repo):
        health.worse(RED, f"last backup {_age(now - last_backup)} ago: overdue")
    else:
        health.reasons.append(f"last backup {_age(now - last_backup)} ago")
    if last_job is not None and last_job.status in BAD_ENDINGS:
        health.worse(RED, f"last job ({last_job.get_kind_display()}) {last_job.status}")
    elif last_job is not None and last_job.status == Job.Status.WARNING:
        health.worse(AMBER, f"last job ({last_job.get_kind_display()}) ended with a warning")
    if repo.catalog_stale:
        health.worse(AMBER, "catalog may lag borg (a sync is due)")
    return health


def recent_jobs(hours: int = 24, limit: int = 200):
    since = timezone.now() - timedelta(hours=hours)
    return (
        Job.objects.filter(Q(created_at__gte=since) | Q(status__in=[Job.Status.RUNNING]))
        .order_by("-created_at", "-pk")
        .only(
            "pk", "kind", "repository_name", "status", "trigger", "created_at", "started_at",
            "finished_at", "error_message", "progress_percent",
        )[:limit]
    )  # fmt: skip


def size_series(repository_ids: list[int]) -> dict[int, list[tuple[datetime, int]]]:
    """Stored size over time per repository, from the catalog: the running sum of what the
    archives added (their deduplicated size), per day, summed by the database."""
    from django.db.models import DateField, F, Func, Sum

    series: dict[int, list] = {pk: [] for pk in repository_ids}
    totals: dict[int, int] = {pk: 0 for pk in repository_ids}
    rows = (
        Archive.objects.filter(repository_id__in=repository_ids, start__isnull=False)
        # SQL's own DATE() (SQLite and PostgreSQL), not TruncDate: on SQLite that calls back
        # into Python for every row.
        .annotate(day=Func(F("start"), function="DATE", output_field=DateField()))
        .values("repository_id", "day")
        .annotate(added=Sum("deduplicated_size"))
        .order_by("repository_id", "day")
        .values_list("repository_id", "day", "added")
    )
    for repo_id, day, added in rows:
        totals[repo_id] += added or 0
        when = datetime(day.year, day.month, day.day, tzinfo=timezone.get_current_timezone())
        series[repo_id].append((when, totals[repo_id]))
    return series
