import json
import shlex
import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from borgapp import audit, params, scheduling, validation
from borgapp.management.commands._base import EXIT_FAILED, EXIT_WARNING, job_summary
from borgapp.models import DatabaseSource, Job, Repository, RetentionPolicy, Schedule

OPERATIONS = [value.replace("_", "-") for value in Schedule.Operation.values]


def schedule_row(schedule: Schedule) -> dict:
    next_run = scheduling.next_run(schedule)
    return {
        "name": schedule.name,
        "operation": schedule.operation,
        "repositories": [r.name for r in schedule.repositories.order_by("name")],
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "description": schedule.cron_description,
        "enabled": schedule.enabled,
        "paused_until": schedule.paused_until.isoformat() if schedule.paused_until else None,
        "next_run": next_run.isoformat() if next_run else None,
        "last_run": schedule.last_run_at.isoformat() if schedule.last_run_at else None,
        "last_outcome": schedule.last_outcome or None,
        "last_success": schedule.last_success_at.isoformat() if schedule.last_success_at else None,
    }


def fail(message: str):
    raise CommandError(message, returncode=EXIT_FAILED)


def named(model, name: str, what: str):
    found = model.objects.filter(name=name).first()
    if found is None:
        noun, _, hint = what.partition(" (")
        fail(f"No {noun} named {name!r}" + (f" ({hint}." if hint else "."))
    return found


class Command(BaseCommand):
    help = "Manage schedules: add, list, run, enable, disable, remove, example."
    requires_system_checks = []

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add a schedule")
        add.add_argument("schedule", metavar="NAME")
        add.add_argument("--repository", action="append", required=True, dest="repositories")
        add.add_argument("--operation", required=True, choices=OPERATIONS)
        add.add_argument("--cron", required=True)
        add.add_argument("--timezone", default="UTC")
        add.add_argument("--source", action="append", default=[], dest="sources")
        add.add_argument("--exclude", action="append", default=[], dest="excludes")
        add.add_argument(
            "--database", action="append", default=[], dest="databases", metavar="SOURCE",
            help="a database source to dump in (repeatable)",
        )  # fmt: skip
        add.add_argument("--prefix", default="backup")
        add.add_argument("--compression", default=params.COMPRESSION)
        add.add_argument("--one-file-system", action="store_true")
        add.add_argument("--checkpoint-interval", type=int)
        add.add_argument("--comment", default="")
        add.add_argument("--policy")
        add.add_argument("--no-compact", action="store_true", help="prune without compact")
        add.add_argument("--check-scope", choices=Schedule.CheckScope.values, default="both")
        add.add_argument("--verify-data", action="store_true")
        add.add_argument("--max-duration", type=int)
        add.add_argument("--last", type=int, help="check only the last N archives")
        add.add_argument("--sample-files", type=int, default=20)
        add.add_argument("--sample-percent", type=int)
        add.add_argument("--sample-max-bytes", type=int, default=params.SAMPLE_MAX_BYTES)
        add.add_argument("--disabled", action="store_true")
        add_hook_options(add)
        hooks = sub.add_parser(
            "hooks",
            help="show a schedule's hooks, or replace those of the stages given",
            description="Each command is one argument, split as a shell would split it (no "
            "shell runs): --before '/usr/bin/docker stop db'. Giving a stage replaces its "
            "commands; --clear removes every hook first.",
        )
        hooks.add_argument("schedule", metavar="NAME")
        hooks.add_argument("--clear", action="store_true", help="remove every hook first")
        hooks.add_argument("--json", action="store_true")
        add_hook_options(hooks)
        listing = sub.add_parser("list", help="schedules with next run, last run, last outcome")
        listing.add_argument("--json", action="store_true")
        run = sub.add_parser("run", help="run now and wait")
        run.add_argument("schedule", metavar="NAME")
        run.add_argument("--json", action="store_true")
        run.add_argument(
            "--dry-run", action="store_true", help="prune schedules: only show what would go"
        )
        for action in ("enable", "disable", "remove"):
            sub.add_parser(action).add_argument("schedule", metavar="NAME")
        example = sub.add_parser(
            "example", help="the guide's daily backup, weekly prune, compact and check (disabled)"
        )
        example.add_argument("repository")

    def handle(self, *args, **options):
        getattr(self, "do_" + options["action"])(options)

    def schedule(self, name: str) -> Schedule:
        schedule = Schedule.objects.filter(name=name).first()
        if schedule is None:
            fail(f"No schedule named {name!r}.")
        return schedule

    def do_add(self, o):
        repositories = [named(Repository, name, "repository") for name in o["repositories"]]
        databases = [
            named(DatabaseSource, name, "database source (see borg_database add)")
            for name in o["databases"]
        ]
        policy = None
        if o["policy"]:
            policy = RetentionPolicy.objects.filter(name=o["policy"]).first()
            if policy is None:
                fail(f"No retention policy named {o['policy']!r} (see borg_policy add).")
        schedule = Schedule(
            name=o["schedule"],
            operation=o["operation"].replace("-", "_"),
            cron=o["cron"],
            timezone=o["timezone"],
            enabled=not o["disabled"],
            source_paths=o["sources"],
            exclude_patterns=o["excludes"],
            archive_prefix=o["prefix"],
            compression=o["compression"],
            one_file_system=o["one_file_system"],
            checkpoint_interval=o["checkpoint_interval"],
            comment=o["comment"],
            retention_policy=policy,
            compact_after_prune=not o["no_compact"],
            check_scope=o["check_scope"],
            verify_data=o["verify_data"],
            max_duration=o["max_duration"],
            check_last=o["last"],
            sample_files=o["sample_files"],
            sample_percent=o["sample_percent"],
            sample_max_bytes=o["sample_max_bytes"],
        )
        set_hooks(schedule, o)
        save(schedule, repositories, databases)
        row = schedule_row(schedule)
        self.stdout.write(
            f"Added {schedule.name}: {schedule.operation} {row['description']} "
            f"({schedule.timezone}); next run {row['next_run'] or '-'}"
        )

    def do_hooks(self, o):
        schedule = self.schedule(o["schedule"])
        changing = (
            o["clear"]
            or o["hook_timeout"] is not None
            or any(o[stage] is not None for stage in validation.HOOK_STAGES)
        )
        if changing:
            if o["clear"]:
                for stage in validation.HOOK_STAGES:
                    setattr(schedule, f"hooks_{stage}", [])
            set_hooks(schedule, o)
            try:
                schedule.full_clean()
            except ValidationError as exc:
                fail(f"Invalid hooks: {'; '.join(' '.join(m) for m in exc.message_dict.values())}")
            schedule.save()
            audit.record("schedule.changed", schedule.name, outcome="success", message="hooks")
        shown = {stage: schedule.hooks(stage) for stage in validation.HOOK_STAGES}
        if o["json"]:
            self.stdout.write(json.dumps({**shown, "timeout": schedule.hook_timeout}, indent=2))
            return
        for stage, commands in shown.items():
            for argv in commands:
                self.stdout.write(f"{stage.replace('_', '-'):<14} {shlex.join(argv)}")
        if not any(shown.values()):
            self.stdout.write(f"{schedule.name} has no hooks.")
        self.stdout.write(f"timeout        {schedule.hook_timeout} s for each hook")

    def do_list(self, o):
        rows = [schedule_row(s) for s in Schedule.objects.prefetch_related("repositories")]
        if o["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        for r in rows:
            state = "enabled" if r["enabled"] else "disabled"
            self.stdout.write(
                f"{r['name']:<24} {r['operation']:<14} {','.join(r['repositories']):<20} "
                f"{r['cron']:<14} {state:<8} next {r['next_run'] or '-':<26} "
                f"last {r['last_run'] or '-'} ({r['last_outcome'] or '-'})"
            )

    def do_run(self, o):
        schedule = self.schedule(o["schedule"])
        try:
            if o["dry_run"]:
                made = scheduling.start_dry_run(schedule, trigger=Job.Trigger.CLI, inline=True)
            else:
                made = scheduling.start_runs(schedule, trigger=Job.Trigger.CLI, inline=True)
        except validation.InvalidInput as exc:
            fail(str(exc))
        for job in made:
            job.refresh_from_db()
        if o["json"]:
            self.stdout.write(json.dumps([job_summary(j) for j in made], indent=2, default=str))
        else:
            for job in made:
                reason = f": {job.error_message}" if job.error_message else ""
                self.stdout.write(f"{job.repository_name}: job {job.pk} {job.status}{reason}")
                if o["dry_run"]:
                    for key in ("kept", "pruned"):
                        for name in job.result.get(key, []):
                            self.stdout.write(f"  would be {key}: {name}")
        statuses = {job.status for job in made}
        if not made:
            fail(f"Schedule {schedule.name} has no repositories.")
        if statuses - set(Job.OK):
            fail(f"Schedule {schedule.name}: not every run succeeded ({', '.join(statuses)}).")
        if Job.Status.WARNING in statuses:
            sys.exit(EXIT_WARNING)

    def do_enable(self, o):
        schedule = self.set_enabled(o, True)
        self.stdout.write(f"Enabled {schedule.name}; next run {scheduling.next_run(schedule)}")

    def do_disable(self, o):
        schedule = self.set_enabled(o, False)
        self.stdout.write(f"Disabled {schedule.name}.")

    def set_enabled(self, o, enabled: bool) -> Schedule:
        schedule = self.schedule(o["schedule"])
        schedule.enabled = enabled
        schedule.save()
        audit.record(
            "schedule.changed", schedule.name, outcome="success", params={"enabled": enabled}
        )
        return schedule

    def do_remove(self, o):
        schedule = self.schedule(o["schedule"])
        schedule.delete()
        audit.record("schedule.deleted", schedule.name, outcome="success")
        self.stdout.write(f"Removed {schedule.name}.")

    def do_example(self, o):
        repo = Repository.objects.filter(name=o["repository"]).first()
        if repo is None:
            fail(f"No repository named {o['repository']!r}.")
        policy, _ = RetentionPolicy.objects.get_or_create(
            name="guide-weekly", defaults={"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6}
        )
        common = {"enabled": False, "archive_prefix": "daily_backup"}
        examples = [
            Schedule(
                name=f"{repo.name}-daily-backup",
                operation="backup",
                cron="0 2 * * *",
                source_paths=["/var/lib/docker/volumes"],
                compression="zstd,3",
                **common,
            ),
            Schedule(
                name=f"{repo.name}-weekly-prune",
                operation="prune",
                cron="0 3 * * 0",
                retention_policy=policy,
                **common,
            ),
            Schedule(
                name=f"{repo.name}-weekly-compact", operation="compact", cron="0 4 * * 0", **common
            ),
            Schedule(
                name=f"{repo.name}-weekly-check", operation="check", cron="0 5 * * 0", **common
            ),
        ]
        with transaction.atomic():
            for schedule in examples:
                save(schedule, [repo])
        for schedule in examples:
            self.stdout.write(
                f"Added {schedule.name} (disabled): {schedule.cron_description}; review it, "
                f"then: manage.py borg_schedule enable {schedule.name}"
            )


def add_hook_options(parser) -> None:
    for stage in validation.HOOK_STAGES:
        option = stage.replace("_", "-")
        parser.add_argument(
            f"--{option}", dest=stage, action="append", metavar="COMMAND",
            help=f"a {option} hook (repeat for several, run in order)",
        )  # fmt: skip
    parser.add_argument(
        "--hook-timeout", type=int, metavar="SECONDS", help="for each hook (default 300)"
    )


def set_hooks(schedule: Schedule, o) -> None:
    """The hook options given replace the commands of their stage; full_clean checks them
    (split, program found) before anything is saved."""
    for stage in validation.HOOK_STAGES:
        if o.get(stage) is not None:
            setattr(schedule, f"hooks_{stage}", list(o[stage]))
    if o.get("hook_timeout") is not None:
        schedule.hook_timeout = o["hook_timeout"]


def save(schedule: Schedule, repositories, databases=()) -> None:
    """Validate like the admin and the API do, then save with its repositories."""
    try:
        schedule.full_clean()
    except ValidationError as exc:
        problems = "; ".join(
            f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items()
        )
        fail(f"Invalid schedule: {problems}")
    with transaction.atomic():
        schedule.save()
        schedule.repositories.set(repositories)
        schedule.databases.set(databases)
    audit.record(
        "schedule.created",
        schedule.name,
        outcome="success",
        params={"operation": schedule.operation, "cron": schedule.cron},
    )
