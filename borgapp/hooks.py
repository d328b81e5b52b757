"""A schedule's hooks around each of its jobs: before-hooks in order (one that fails stops the
job before borg runs), then after-success or after-failure, then always-after, whatever
happened. Each runs as the worker's own user through borg.run_program (no shell, its own
process group, stopped at the schedule's hook timeout) with a clean environment that holds
the facts of the job and never a secret. Its last lines are kept on the job, with every
secret the job knows masked."""

import os
import shlex
from dataclasses import dataclass, field

from borgapp import borg, logredact, vault
from borgapp.errors import OperationError
from borgapp.models import Job, Schedule

MASK = "***"


class HookFailed(OperationError):
    def __init__(self, message: str, *, stopped: bool = False):
        super().__init__(message, "hook_cancelled" if stopped else "hook_failed")
        self.stopped = stopped


@dataclass
class Hooks:
    """The hooks of one job (none when it was not started by or with a schedule)."""

    job: Job
    schedule: Schedule | None
    secrets: list[str] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, job: Job) -> "Hooks":
        schedule = job.schedule if job.schedule_id else None
        secrets = []
        if schedule is not None and schedule.has_hooks and job.repository_id:
            try:
                secrets.append(job.repository.get_passphrase())
            except vault.VaultError:  # the job itself will say so; nothing to mask then
                pass
        return cls(job, schedule, [s for s in secrets if s])

    def before(self, should_stop=None) -> None:
        """Run the before-hooks; raise HookFailed at the first that fails."""
        for number, argv in enumerate(self._commands("before"), 1):
            entry = self._run("before", number, argv, {}, should_stop)
            if entry["ok"]:
                continue
            stopped = entry.get("stopped", False)
            raise HookFailed(
                f"{entry['name']} {_what_went_wrong(entry)}: borg did not run."
                + (f" Its last line: {entry['output'][-1]}" if entry["output"] else ""),
                stopped=stopped,
            )

    def after(self, status: str, result: dict, error: str) -> list[str]:
        """Run after-success or after-failure, then always-after; all of them run even when
        one fails. Returns what failed, in words (empty when all went well)."""
        facts = {
            "OPSCENTER_OUTCOME": status,
            "OPSCENTER_ERROR": error[:1000],
            "OPSCENTER_ARCHIVE": str(result.get("archive_name") or ""),
        }
        ok = status in Job.OK
        problems = []
        for stage in ("after_success" if ok else "after_failure", "always_after"):
            for number, argv in enumerate(self._commands(stage), 1):
                entry = self._run(stage, number, argv, facts, None)
                if not entry["ok"]:
                    problems.append(f"{entry['name']} {_what_went_wrong(entry)}")
        return problems

    def _commands(self, stage: str) -> list[list[str]]:
        return self.schedule.hooks(stage) if self.schedule is not None else []

    def _run(self, stage: str, number: int, argv: list[str], facts: dict, should_stop) -> dict:
        name = f"{stage.replace('_', '-')} hook {number} ({os.path.basename(argv[0])})"
        ran = borg.run_program(
            argv,
            env=self._environment(stage, facts),
            timeout=self.schedule.hook_timeout,
            should_stop=should_stop,
        )
        entry = {
            "name": name,
            "stage": stage,
            "exit": ran.rc,
            "seconds": round(ran.seconds, 2),
            "timed_out": ran.timed_out,
            "stopped": ran.stopped,
            "not_started": ran.not_started,
            "output": [self._mask(line) for line in ran.tail],
            "ok": ran.rc == 0 and not (ran.timed_out or ran.stopped),
        }
        self.log.append(entry)
        return entry

    def _environment(self, stage: str, facts: dict) -> dict[str, str]:
        """Built from nothing (the worker's own environment holds the encryption key): a
        PATH, a locale, HOME, and the facts of the job."""
        job = self.job
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": os.environ.get("HOME", "/"),
            "OPSCENTER_HOOK": stage,
            "OPSCENTER_JOB_ID": str(job.pk),
            "OPSCENTER_JOB_KIND": job.kind,
            "OPSCENTER_REPOSITORY": job.repository_name,
            "OPSCENTER_SCHEDULE": self.schedule.name,
            "OPSCENTER_ARCHIVE_PREFIX": str((job.params or {}).get("prefix") or ""),
        }
        env.update(facts)
        return env

    def _mask(self, line: str) -> str:
        for secret in self.secrets:
            line = line.replace(secret, MASK)
        return logredact.redact(line)


def _what_went_wrong(entry: dict) -> str:
    if entry["not_started"]:
        return f"could not start: {entry['not_started']}"
    if entry["timed_out"]:
        return f"was stopped at its timeout after {entry['seconds']:.0f} s"
    if entry["stopped"]:
        return "was stopped by a cancel"
    return f"exited with {entry['exit']}"


def shown(argv: list[str]) -> str:
    """A command as a person would type it (for the forms and the CLI)."""
    return shlex.join(argv)
