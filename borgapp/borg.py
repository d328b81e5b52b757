"""The one door to borg (design.md): argv as data, a pipe for the passphrase, streamed
`--log-json`, exit codes mapped to exceptions, and a signal ladder for cancel and deadlines.

This module is the only one that imports `subprocess`: borg, and the programs a job runs
around it (hooks), start here. It knows nothing of Django models:
callers hand it a `BorgConfig`, a location string, and plain values.
"""

import functools
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from borgapp import itemlist, validation

MIN_VERSION = (1, 2, 5)  # CVE-2023-36811
SAFE_RESTORE_VERSION = (1, 4, 5)  # CVE-2026-62268
TAIL_LINES = 25


# --- errors ----------------------------------------------------------------------------


class BorgError(Exception):
    """borg failed. `code` is stable for machines, `str(self)` is fit for a person."""

    code = "borg_failed"
    summary = "borg failed"
    transient = False

    def __init__(self, message: str = "", *, rc: int | None = None, msgid: str = "", tail=()):
        self.message = message or self.summary
        self.rc = rc
        self.msgid = msgid
        self.tail = list(tail)
        super().__init__(self.message)


class WrongPassphrase(BorgError):
    code = "wrong_passphrase"
    summary = "The passphrase does not open this repository."


class RepositoryMissing(BorgError):
    code = "repository_missing"
    summary = "There is no borg repository at this location."


class RepositoryExists(BorgError):
    code = "repository_exists"
    summary = "A repository (or another non-empty directory) already exists at this location."


class ArchiveMissing(BorgError):
    code = "archive_missing"
    summary = "The archive does not exist in this repository."


class ArchiveExists(BorgError):
    code = "archive_exists"
    summary = "An archive with this name already exists."


class LockTimeout(BorgError):
    code = "lock_timeout"
    summary = "The repository is locked by another borg process."
    transient = True


class ConnectionClosed(BorgError):
    code = "connection_closed"
    summary = "The connection to the remote repository was closed."
    transient = True


class DiskFull(BorgError):
    code = "disk_full"
    summary = "Not enough free space (disk full or storage quota reached)."


class IntegrityError(BorgError):
    code = "integrity_error"
    summary = "borg found corrupted or inconsistent data."


class AccessAborted(BorgError):
    code = "access_refused"
    summary = (
        "borg refused to open the repository: it was moved (relocated) or it is an "
        "unencrypted repository this installation has not seen before."
    )


class Interrupted(BorgError):
    code = "interrupted"
    summary = "borg was stopped by a signal before it finished."


class DeadlineExceeded(BorgError):
    code = "deadline_exceeded"
    summary = "The job ran past its deadline and was stopped."


class BorgNotFound(BorgError):
    code = "borg_not_found"
    summary = "The borg binary could not be started."


MSGID_CLASSES: dict[str, type[BorgError]] = {
    "PassphraseWrong": WrongPassphrase,
    "PasswordRetriesExceeded": WrongPassphrase,
    "NoPassphraseFailure": WrongPassphrase,
    "PasscommandFailure": WrongPassphrase,
    "Repository.DoesNotExist": RepositoryMissing,
    "Repository.InvalidRepository": RepositoryMissing,
    "Repository.InvalidRepositoryConfig": RepositoryMissing,
    "Repository.ParentPathDoesNotExist": RepositoryMissing,
    "Repository.AlreadyExists": RepositoryExists,
    "Repository.PathAlreadyExists": RepositoryExists,
    "Archive.DoesNotExist": ArchiveMissing,
    "Archive.AlreadyExists": ArchiveExists,
    "LockTimeout": LockTimeout,
    "LockError": LockTimeout,
    "LockErrorT": LockTimeout,
    "LockFailed": LockTimeout,
    "ConnectionClosed": ConnectionClosed,
    "ConnectionClosedWithHint": ConnectionClosed,
    "ConnectionBrokenWithHint": ConnectionClosed,
    "Repository.InsufficientFreeSpaceError": DiskFull,
    "Repository.StorageQuotaExceeded": DiskFull,
    "IntegrityError": IntegrityError,
    "FileIntegrityError": IntegrityError,
    "DecompressionError": IntegrityError,
    "Repository.CheckNeeded": IntegrityError,
    "Repository.ObjectNotFound": IntegrityError,
    "ArchiveTAMInvalid": IntegrityError,
    "ArchiveTAMRequiredError": IntegrityError,
    "TAMInvalid": IntegrityError,
    "TAMRequiredError": IntegrityError,
    "TAMUnsupportedSuiteError": IntegrityError,
    "UnsupportedManifestError": IntegrityError,
    "UnsupportedPayloadError": IntegrityError,
    "Cache.RepositoryAccessAborted": AccessAborted,
    "Cache.CacheInitAbortedError": AccessAborted,
    "Cache.EncryptionMethodMismatch": AccessAborted,
    "Cache.RepositoryIDNotUnique": AccessAborted,
}

# borg 1.4 with BORG_EXIT_CODES=modern (docs/internals/frontends.rst, "Message IDs").
RC_CLASSES: dict[int, type[BorgError]] = {
    10: RepositoryExists,
    12: IntegrityError,  # Repository.CheckNeeded
    13: RepositoryMissing,
    14: DiskFull,
    15: RepositoryMissing,  # InvalidRepository
    16: RepositoryMissing,  # InvalidRepositoryConfig
    17: IntegrityError,  # ObjectNotFound
    18: RepositoryMissing,  # ParentPathDoesNotExist
    19: RepositoryExists,  # PathAlreadyExists
    20: DiskFull,
    30: ArchiveExists,
    31: ArchiveMissing,
    50: WrongPassphrase,
    51: WrongPassphrase,
    52: WrongPassphrase,
    53: WrongPassphrase,
    60: AccessAborted,
    62: AccessAborted,
    70: LockTimeout,
    71: LockTimeout,
    72: LockTimeout,
    73: LockTimeout,
    80: ConnectionClosed,
    81: ConnectionClosed,
    87: ConnectionClosed,
}
RC_CLASSES.update({rc: IntegrityError for rc in range(90, 100)})

NO_SPACE_RE = re.compile(r"No space left on device|\[Errno 28\]|ENOSPC")


def error_for(rc: int, messages: list[dict], tail: list[str], *, check: bool = False):
    """Map a non-success exit to a BorgError (REL-06). Returns None for success/warning."""
    if rc < 0 or rc >= 128:
        signo = -rc if rc < 0 else rc - 128
        return Interrupted(
            f"borg was stopped by signal {signo} before it finished.", rc=rc, tail=tail
        )
    if rc == 0:
        return None
    if rc == 1 or 100 <= rc <= 127:
        if check:
            return IntegrityError(
                "borg check found errors in the repository (see the log).", rc=rc, tail=tail
            )
        return None
    errors = [m for m in messages if m.get("levelname") in ("ERROR", "CRITICAL")]
    last = errors[-1] if errors else (messages[-1] if messages else {})
    msgid = last.get("msgid", "") or ""
    text = last.get("message", "") or (tail[-1] if tail else "")
    cls = MSGID_CLASSES.get(msgid) or RC_CLASSES.get(rc)
    if cls is None and any(NO_SPACE_RE.search(line) for line in tail + [text]):
        cls = DiskFull
    if cls is None and (_crashed(messages, tail) or not errors):
        # A Python traceback (or nothing borg said as an error) names no reason a person can
        # act on; its last line is often borg's system info ("SSH_ORIGINAL_COMMAND: None").
        # The log itself stays in the job's tail for the admin.
        return BorgError(
            f"borg failed unexpectedly (exit {rc}); its log is kept with the job.",
            rc=rc, msgid=msgid, tail=tail,
        )  # fmt: skip
    cls = cls or BorgError
    return cls(_person_message(cls, text), rc=rc, msgid=msgid, tail=tail)


CRASH_MSGIDS = {"Exception", "RemoteException"}  # borg's "Local/Remote Exception" (archiver)


def _crashed(messages: list[dict], tail: list[str]) -> bool:
    """Whether borg died of an exception it did not expect, rather than an error of its own."""
    if any(m.get("msgid") in CRASH_MSGIDS for m in messages):
        return True
    texts = tail + [m.get("message", "") or "" for m in messages]
    return any("Traceback (most recent call last)" in text for text in texts)


def _person_message(cls: type[BorgError], borg_text: str) -> str:
    first_line = borg_text.strip().splitlines()[0] if borg_text.strip() else ""
    if cls is BorgError:
        return f"borg failed: {first_line}" if first_line else "borg failed."
    return cls.summary


# --- configuration and commands ------------------------------------------------------------


@dataclass(frozen=True)
class BorgConfig:
    binary: str
    base_dir: str
    rsh: str = "ssh -oBatchMode=yes"
    remote_path: str = ""
    lock_wait: int = 600
    grace_sigint: float = 60.0
    grace_sigterm: float = 15.0
    host_id: str = ""


@dataclass
class Command:
    """A borg invocation as data: options before `--`, user-supplied positionals after."""

    subcommand: list[str]
    options: list[str] = field(default_factory=list)
    positionals: list[str] = field(default_factory=list)
    json_output: bool = False
    progress: bool = False
    check: bool = False  # borg check: rc 1 means corruption
    cwd: str | None = None
    cwd_fd: int | None = None  # a directory held open: borg starts in it, not in `cwd`'s path
    stdin_data: str | None = None
    stdout_fd: int | None = None  # borg's stdout goes there (a pipe to a restore tool)
    uses_lock: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    # SIGINT first only where borg does something with it (create writes a checkpoint);
    # `borg list` ignores it and lists on to the end (seconds on a big archive), and it
    # does not stop at a closed pipe either: SIGTERM stops it at once
    sigint_first: bool = True
    program: tuple[str, ...] = ()  # run this instead of config.binary (borgapp.itemlist)

    def argv(self, config: BorgConfig) -> list[str]:
        common = ["--log-json"]
        if self.uses_lock:
            common.append(f"--lock-wait={config.lock_wait}")
        if self.progress:
            common.append("--progress")
        if config.remote_path:
            common.append(f"--remote-path={config.remote_path}")
        program = self.program or (config.binary,)
        return [*program, *self.subcommand, *common, *self.options, "--", *self.positionals]


def repo_arg(location: str, archive: str | None = None) -> str:
    """`REPO` or `REPO::ARCHIVE`, validated again right before borg sees it (SEC-04, SEC-05)."""
    validation.validate_location(location)
    if archive is None:
        return location
    validation.validate_existing_archive_name(archive)
    return f"{location}::{archive}"


def _opt(name: str, value) -> str:
    # The `--name=value` form keeps a value that starts with '-' from being read as an option.
    return f"--{name}={value}"


def init_cmd(location: str, encryption: str, append_only: bool = False) -> Command:
    """The location's missing parent folders are made too (under an allowed root, checked
    by validation before a job exists)."""
    options = [_opt("encryption", encryption), "--make-parent-dirs"]
    if append_only:
        options.append("--append-only")
    return Command(["init"], options, [repo_arg(location)])


def create_cmd(
    location: str,
    archive: str,
    sources: list[str],
    *,
    compression: str = "lz4",
    exclude_file: str | None = None,
    one_file_system: bool = False,
    checkpoint_interval: int | None = None,
    comment: str = "",
    read_special: bool = False,
) -> Command:
    if not sources:
        raise validation.InvalidInput("At least one source path is required.")
    options = [
        "--json",
        _opt("compression", validation.validate_compression(compression)),
    ]
    if exclude_file:
        options.append(_opt("exclude-from", exclude_file))
    if one_file_system:
        options.append("--one-file-system")
    if checkpoint_interval:
        options.append(_opt("checkpoint-interval", int(checkpoint_interval)))
    if comment:
        validation.no_control_chars(comment, "Comment")
        options.append(_opt("comment", comment))
    if read_special:  # database dumps arrive through named pipes
        options.append("--read-special")
    paths = [validation.validate_source_path(s) for s in sources]
    return Command(
        ["create"],
        options,
        [repo_arg(location, archive), *paths],
        json_output=True,
        progress=True,
    )


LIST_FORMAT = "{name}{id}{start}{end}{hostname}{username}{comment}"


def list_cmd(location: str) -> Command:
    options = [
        "--json",
        "--consider-checkpoints",
        _opt("format", LIST_FORMAT),
    ]
    return Command(["list"], options, [repo_arg(location)], json_output=True)


def info_cmd(
    location: str, *, all_archives: bool = False, trust_unencrypted: bool = False
) -> Command:
    """`trust_unencrypted` answers yes to borg's question about an unencrypted repository it
    has not seen (importing is the explicit act of trusting it); every other call says no."""
    options = ["--json"]
    if all_archives:
        options.append(_opt("glob-archives", "*"))
    command = Command(["info"], options, [repo_arg(location)], json_output=True)
    if trust_unencrypted:
        command.extra_env["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] = "yes"
    return command


# borg prune's count rules, in its own order; `keep_within` is the one rule with a duration.
KEEP_COUNTS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
               "keep_yearly")  # fmt: skip


def keep_flags(keep_within: str = "", **counts) -> list[str]:
    """borg prune flags for a retention rule set; zero or empty rules are left out."""
    options = []
    if keep_within:
        options.append(_opt("keep-within", validation.validate_keep_within(keep_within)))
    for name in KEEP_COUNTS:
        value = counts.get(name)
        if value:
            if int(value) < 0:
                raise validation.InvalidInput(f"{name} must not be negative.")
            options.append(_opt(name.replace("_", "-"), int(value)))
    return options


def prune_cmd(
    location: str,
    glob: str,
    keep_options: list[str],
    *,
    dry_run: bool = False,
) -> Command:
    if not keep_options:
        raise validation.InvalidInput("Prune needs at least one keep rule.")
    options = ["--list", _opt("glob-archives", glob), *keep_options]
    if dry_run:
        options.append("--dry-run")
    return Command(["prune"], options, [repo_arg(location)], progress=True)


def compact_cmd(location: str) -> Command:
    return Command(["compact"], [], [repo_arg(location)], progress=True)


def check_cmd(
    location: str,
    *,
    repository_only: bool = False,
    archives_only: bool = False,
    verify_data: bool = False,
    last: int | None = None,
    glob: str | None = None,
    max_duration: int | None = None,
) -> Command:
    if repository_only and archives_only:
        raise validation.InvalidInput("Choose either repository-only or archives-only, not both.")
    if verify_data and repository_only:
        raise validation.InvalidInput("verify-data checks archives; it cannot be repository-only.")
    if max_duration and not repository_only:
        raise validation.InvalidInput("max-duration works only with a repository-only check.")
    options = []
    if repository_only:
        options.append("--repository-only")
    if archives_only:
        options.append("--archives-only")
    if verify_data:
        options.append("--verify-data")
    if last:
        options.append(_opt("last", int(last)))
    if glob:
        options.append(_opt("glob-archives", glob))
    if max_duration:
        options.append(_opt("max-duration", int(max_duration)))
    return Command(["check"], options, [repo_arg(location)], progress=True, check=True)


def extract_cmd(
    location: str,
    archive: str,
    target: str,
    paths: list[str] | None = None,
    *,
    strip_components: int = 0,
) -> Command:
    options = ["--sparse"]
    if strip_components:
        options.append(_opt("strip-components", int(strip_components)))
    return Command(
        ["extract"],
        options,
        [repo_arg(location, archive), *_path_patterns(paths)],
        progress=True,
        cwd=target,
    )


def _path_patterns(paths: list[str] | None) -> list[str]:
    # borg reads a PATH argument as a pattern ("sh:*" would select everything); the explicit
    # path-prefix style makes each one mean exactly that path (and what is below it).
    return ["pp:" + validation.validate_archive_path(p) for p in (paths or [])]


def extract_stdout_cmd(location: str, archive: str, path: str, stdout_fd: int) -> Command:
    """One file of an archive written to `stdout_fd` (a pipe to a restore tool)."""
    return Command(
        ["extract"], ["--stdout"], [repo_arg(location, archive), *_path_patterns([path])],
        stdout_fd=stdout_fd,
    )  # fmt: skip


def export_tar_cmd(location: str, archive: str, paths: list[str], stdout_fd: int) -> Command:
    """Some paths of an archive as one plain tar stream written to `stdout_fd` (a download:
    names exactly as stored, non-UTF-8 bytes and hardlinks included; a lone hardlink comes as
    the file it is, where `extract --stdout` would give nothing)."""
    return Command(
        ["export-tar"], [], [repo_arg(location, archive), "-", *_path_patterns(paths)],
        stdout_fd=stdout_fd,
    )  # fmt: skip


def delete_archive_cmd(location: str, archive: str) -> Command:
    return Command(["delete"], [], [repo_arg(location, archive)], progress=True)


def mount_cmd(location: str, archive: str | None, mountpoint: str):
    return Command(
        ["mount"],
        [],
        [repo_arg(location, archive or None), mountpoint],
    )


def umount_cmd(mountpoint: str) -> Command:
    return Command(["umount"], [], [mountpoint], uses_lock=False)


def key_export_cmd(location: str, paper: bool = False) -> Command:
    options = ["--paper"] if paper else []
    return Command(["key", "export"], options, [repo_arg(location)])


def key_import_cmd(location: str, key: str) -> Command:
    """Put an exported key back (`borg key export`'s text, through stdin): a keyfile
    repository's key lands in BORG_BASE_DIR's keys folder. Like `key export`, borg takes no
    repository lock for it."""
    positionals = [repo_arg(location), "-"]
    return Command(["key", "import"], [], positionals, stdin_data=key, uses_lock=False)


def change_passphrase_cmd(location: str, old: str, new: str) -> Command:
    # borg reads BORG_PASSPHRASE_FD only once and would take a new passphrase only from the
    # environment (BORG_NEW_PASSPHRASE); both passphrases go through a stdin pipe instead.
    for value in (old, new):
        validation.validate_passphrase(value)
    return Command(
        ["key", "change-passphrase"],
        [],
        [repo_arg(location)],
        stdin_data=f"{old}\n{new}\n{new}\n",
    )


# What the file index reads of each item (borgapp.fileindex), NUL after each field: no name,
# link target or path holds a NUL, so the stream splits into records of these fields. Text
# rather than --json-lines: borg writes it in about half the time.
INDEX_FIELDS = itemlist.FIELDS


@functools.cache
def lister_usable() -> bool:
    """This Python has the borg package that borgapp.itemlist was written for."""
    try:
        found = metadata.version("borgbackup")
    except metadata.PackageNotFoundError:
        return False
    return bool(sys.executable) and found.startswith(itemlist.WRITTEN_FOR)


def index_list_cmd(location: str, archive: str, stdout_fd: int, *, fast: bool = True) -> Command:
    """Every item of an archive as INDEX_FIELDS, NUL-separated, written to `stdout_fd`.
    `fast`: by borgapp.itemlist where it can run (borg's own `borg list`, its per-item
    formatting made cheap: the same bytes in a quarter of the time, and each file's content
    identity after them, see index_fields), else by the borg binary."""
    if fast and lister_usable():
        # -I: only the standard library and site-packages on the path (this folder's own
        # borg.py must not stand in for borg's package)
        program, fmt = (sys.executable, "-I", itemlist.__file__), itemlist.CONTENT_FORMAT
    else:
        program, fmt = (), itemlist.FORMAT
    return Command(["list"], [_opt("format", fmt)], [repo_arg(location, archive)],
                   stdout_fd=stdout_fd, sigint_first=False, program=program)  # fmt: skip


def index_fields(command: Command) -> tuple[str, ...]:
    """The fields of each record that an index_list_cmd writes."""
    return itemlist.CONTENT_FIELDS if command.program else itemlist.FIELDS


def list_items_cmd(
    location: str, archive: str, paths: list[str] | None = None, *, checksums: bool = False
) -> Command:
    """The items of one archive (or of some paths in it), one JSON object per line (streamed,
    see `run(on_line=)`). `checksums` adds each file's sha256, which reads its data."""
    options = ["--json-lines"]
    if checksums:
        options.append(_opt("format", "{path}{type}{size}{sha256}"))
    return Command(["list"], options, [repo_arg(location, archive), *_path_patterns(paths)])


def diff_cmd(location: str, archive: str, other: str) -> Command:
    """What changed from `archive` to `other`, one JSON object per path."""
    validation.validate_existing_archive_name(other)
    return Command(["diff"], ["--json-lines"], [repo_arg(location, archive), other])


def break_lock_cmd(location: str) -> Command:
    return Command(["break-lock"], [], [repo_arg(location)])


# --- running -----------------------------------------------------------------------------


@dataclass
class Result:
    rc: int
    stdout: str
    messages: list[dict]
    tail: list[str]
    duration: float

    @property
    def warning(self) -> bool:
        return self.rc == 1 or 100 <= self.rc <= 127

    @property
    def warnings(self) -> list[str]:
        return [m.get("message", "") for m in self.messages if m.get("levelname") == "WARNING"]

    def json(self):
        try:
            return json.loads(self.stdout) if self.stdout.strip() else {}
        except json.JSONDecodeError as exc:
            raise BorgError(f"borg printed output that is not JSON: {exc}", rc=self.rc) from None


def environment(config: BorgConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no inherited BORG_* (a passphrase there would leak), no prompts."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "HOME": config.base_dir,
        "BORG_BASE_DIR": config.base_dir,
        "BORG_EXIT_CODES": "modern",
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no",
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
        "BORG_DISPLAY_PASSPHRASE": "no",
        "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "NO",
        "BORG_DELETE_I_KNOW_WHAT_I_AM_DOING": "NO",
        "BORG_RSH": config.rsh,
        # borg prints naive local times; in UTC they read the same everywhere.
        "TZ": "UTC",
    }
    if config.host_id:
        env["BORG_HOST_ID"] = config.host_id
    env.update(extra or {})
    return env


class _Stopper:
    """The signal ladder (REL-04): SIGINT to borg (it writes a checkpoint), then SIGTERM,
    then SIGKILL to the whole process group."""

    def __init__(self, proc: subprocess.Popen, config: BorgConfig, sigint_first: bool = True):
        self.proc = proc
        self.config = config
        self.sigint_first = sigint_first
        self.stage = 0
        self.next_at = 0.0

    def step(self, now: float) -> None:
        if self.stage == 0 and not self.sigint_first:
            self._send(signal.SIGTERM, group=False)
            self.stage, self.next_at = 2, now + self.config.grace_sigterm
        elif self.stage == 0:
            self._send(signal.SIGINT, group=False)
            self.stage, self.next_at = 1, now + self.config.grace_sigint
        elif self.stage == 1 and now >= self.next_at:
            self._send(signal.SIGTERM, group=False)
            self.stage, self.next_at = 2, now + self.config.grace_sigterm
        elif self.stage == 2 and now >= self.next_at:
            self._send(signal.SIGKILL, group=True)
            self.stage = 3

    def _send(self, signo: int, group: bool) -> None:
        try:
            if group:
                os.killpg(self.proc.pid, signo)
            else:
                self.proc.send_signal(signo)
        except ProcessLookupError:
            pass


def run(
    command: Command,
    config: BorgConfig,
    *,
    passphrase: str | None = None,
    on_event: Callable[[dict], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    deadline: float | None = None,
    raise_on_error: bool = True,
    on_line: Callable[[bytes], None] | None = None,
) -> Result:
    """Run one borg command to its end and return its Result.

    - the passphrase travels through an anonymous pipe (`BORG_PASSPHRASE_FD`, SEC-01);
    - stdin is /dev/null (or a closed pipe with `stdin_data`) and borg runs in a new session,
      so no prompt can ever block (REL-05);
    - `--log-json` lines are parsed as they stream: progress goes to `on_event`, the last
      lines are kept for the error message;
    - `should_stop()` returning True, or `deadline` seconds passing, starts the signal ladder;
    - with `on_line`, stdout is handed over line by line as it arrives instead of being kept
      (an archive's listing can have millions of lines).
    Raises a BorgError subclass on failure (unless raise_on_error is False); a warning
    (rc 1 or 100-127) returns normally with `result.warning` set.
    """
    argv = command.argv(config)
    env = environment(config, command.extra_env)
    read_fd = _passphrase_pipe(passphrase, env)
    started = time.monotonic()
    proc = _spawn(command, config, argv, env, read_fd)
    end_at = started + deadline if deadline else None
    try:
        if on_start:
            on_start(proc.pid)
        _feed_stdin(proc, command.stdin_data)
        stopper = _Stopper(proc, config, command.sigint_first)
        stdout, messages, tail, deadline_hit = _pump(
            proc, stopper, end_at, should_stop, on_event, on_line
        )
    except BaseException:
        # Never leave borg behind (a worker being torn down, KeyboardInterrupt in the CLI):
        # ask it to stop politely first so it releases its locks.
        _stop_now(proc)
        raise
    rc = proc.wait()
    result = Result(
        rc=rc, stdout=stdout, messages=messages, tail=tail, duration=time.monotonic() - started
    )
    return _verdict(result, command, raise_on_error, deadline_hit=deadline_hit, deadline=deadline)


def _passphrase_pipe(passphrase: str | None, env: dict[str, str]) -> int | None:
    """Write the passphrase into an anonymous pipe and point `BORG_PASSPHRASE_FD` in `env` at
    its read end; return that descriptor (the caller closes it once borg holds its copy)."""
    if passphrase is None:
        return None
    validation.validate_passphrase(passphrase)
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, passphrase.encode())
    finally:
        os.close(write_fd)
    env["BORG_PASSPHRASE_FD"] = str(read_fd)
    return read_fd


def _spawn(
    command: Command, config: BorgConfig, argv: list[str], env: dict[str, str], read_fd
) -> subprocess.Popen:
    cwd = command.cwd
    if command.cwd_fd is not None:
        # The child enters the held directory itself: it resolves /proc/self/fd/N (its copy
        # of our descriptor, before exec closes it) to that open directory, whatever its
        # path leads to by now. No path is walked again between the check and borg's start.
        cwd = f"/proc/self/fd/{command.cwd_fd}"
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if command.stdin_data is not None else subprocess.DEVNULL,
            stdout=command.stdout_fd if command.stdout_fd is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            pass_fds=(read_fd,) if read_fd is not None else (),
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        if cwd is not None and exc.filename == cwd:
            raise BorgError(
                f"Could not enter {command.cwd or 'the working directory'}: {exc.strerror}."
            ) from None
        raise BorgNotFound(f"Could not start borg ({argv[0]}): {exc.strerror}.") from None
    finally:
        if read_fd is not None:
            os.close(read_fd)


def _feed_stdin(proc: subprocess.Popen, data: str | None) -> None:
    if data is None:
        return
    try:
        proc.stdin.write(data.encode())
    except BrokenPipeError:
        pass
    finally:
        proc.stdin.close()


class _Lines:
    """Cuts a stream into lines as chunks arrive: each complete line goes to `handle`, the
    partial last one waits for the rest (or for `close`)."""

    def __init__(self, handle: Callable[[bytes], None]):
        self.handle = handle
        self.pending = b""

    def feed(self, data: bytes) -> None:
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            self.handle(line)

    def close(self) -> None:
        if self.pending:
            self.handle(self.pending)
            self.pending = b""


def _pump(
    proc: subprocess.Popen,
    stopper: _Stopper,
    end_at: float | None,
    should_stop: Callable[[], bool] | None,
    on_event: Callable[[dict], None] | None,
    on_line: Callable[[bytes], None] | None,
) -> tuple[str, list[dict], list[str], bool]:
    """Read stdout and stderr until both close and the process has exited, stepping the
    signal ladder on a stop request or at `end_at`. Returns (stdout, messages, tail,
    deadline_hit); stdout is empty with `on_line`."""
    chunks: list[bytes] = []
    messages: list[dict] = []
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    err = _Lines(lambda line: _handle_line(line, messages, tail, on_event))
    out = _Lines(on_line) if on_line is not None else None
    sinks = {"out": out.feed if out is not None else chunks.append, "err": err.feed}
    deadline_hit = False
    with selectors.DefaultSelector() as sel:
        streams = [(proc.stdout, "out"), (proc.stderr, "err")]
        for stream, name in streams:
            if stream is not None:  # stdout is elsewhere with Command.stdout_fd
                sel.register(stream, selectors.EVENT_READ, name)
        open_streams = sum(1 for stream, _ in streams if stream is not None)
        while open_streams:
            for key, _ in sel.select(timeout=0.5):
                data = os.read(key.fd, 65536)
                if data:
                    sinks[key.data](data)
                else:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
            now = time.monotonic()
            if end_at is not None and now >= end_at:
                deadline_hit = True
            wants_stop = deadline_hit or (
                should_stop is not None and stopper.stage == 0 and should_stop()
            )
            if stopper.stage or wants_stop:
                stopper.step(now)
    deadline_hit = _linger(proc, stopper, end_at, deadline_hit)
    err.close()
    if out is not None:
        out.close()
    return b"".join(chunks).decode("utf-8", "replace"), messages, list(tail), deadline_hit


def _linger(
    proc: subprocess.Popen, stopper: _Stopper, end_at: float | None, deadline_hit: bool
) -> bool:
    while proc.poll() is None:
        # Pipes closed (e.g. a daemonised child holds none) but the process lingers.
        now = time.monotonic()
        if end_at is not None and now >= end_at:
            deadline_hit = True
        if stopper.stage or deadline_hit:
            stopper.step(now)
        time.sleep(0.05)
    return deadline_hit


def _verdict(
    result: Result,
    command: Command,
    raise_on_error: bool,
    *,
    deadline_hit: bool,
    deadline: float | None,
) -> Result:
    """The Result, or the BorgError its return code means (a DeadlineExceeded when the
    deadline stopped it); with raise_on_error False the Result in every case."""
    error = error_for(result.rc, result.messages, result.tail, check=command.check)
    if error is not None and deadline_hit:
        error = DeadlineExceeded(
            f"Stopped after the {deadline:.0f} s deadline.", rc=result.rc, tail=result.tail
        )
    if error is not None and raise_on_error:
        raise error
    return result


def _stop_now(proc: subprocess.Popen) -> None:
    for signo, wait in ((signal.SIGINT, 5.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            if signo == signal.SIGKILL:
                os.killpg(proc.pid, signo)
            else:
                proc.send_signal(signo)
            proc.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def _handle_line(raw: bytes, messages: list[dict], tail: deque, on_event) -> None:
    line = raw.decode("utf-8", "replace").rstrip("\r")
    if not line.strip():
        return
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        tail.append(line)
        return
    if not isinstance(event, dict):
        tail.append(line)
        return
    kind = event.get("type")
    if kind == "log_message":
        messages.append(event)
        tail.append(f"{event.get('levelname', '')}: {event.get('message', '')}".strip(": "))
    elif kind in ("question_prompt", "question_prompt_retry", "question_accepted_false"):
        tail.append(event.get("message", ""))
    if on_event is not None and kind in (
        "archive_progress",
        "progress_percent",
        "progress_message",
        "log_message",
    ):
        on_event(event)


def progress_of(event: dict, fields: dict) -> bool:
    """Update a job's progress `fields` from one `--log-json` event; False if it says none
    (the center's jobs and the agents read borg's progress alike)."""
    kind = event.get("type")
    if kind == "archive_progress" and not event.get("finished"):
        fields.update(
            progress_bytes=event.get("original_size"),
            progress_files=event.get("nfiles"),
            progress_path=(event.get("path") or "")[:4000],
        )
    elif kind == "progress_percent" and not event.get("finished"):
        total, current = event.get("total"), event.get("current")
        if total:
            fields["progress_percent"] = round(100.0 * (current or 0) / total, 1)
        fields["progress_message"] = (event.get("message") or "")[:500]
    elif kind == "progress_message" and event.get("message"):
        fields["progress_message"] = event["message"][:500]
    else:
        return False
    return True


# --- small helpers used by the operations --------------------------------------------------


def version(config: BorgConfig) -> tuple[int, int, int]:
    """The borg version as a tuple, e.g. (1, 4, 5)."""
    result = run(Command(["--version"], uses_lock=False), config, raise_on_error=False)
    text = (result.stdout or " ".join(result.tail)).strip()
    return parse_version(text)


def parse_version(text: str) -> tuple[int, int, int]:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise BorgError(f"Could not read borg's version from {text[:80]!r}.")
    return tuple(int(part) for part in match.groups())


def write_exclude_file(directory: Path, patterns: list[str]) -> Path:
    """Exclude patterns go to a file borg reads (never into argv strings)."""
    cleaned = [validation.validate_exclude_pattern(p) for p in patterns]
    path = directory / "excludes.txt"
    path.write_text("".join(p + "\n" for p in cleaned))
    return path


PRUNE_LINE_RE = re.compile(
    r"^(Keeping archive|Would keep|Would prune|Pruning archive)(?: \([^)]*\))?:\s+(\S+)"
)


def prune_lines(result: Result) -> dict[str, list[str]]:
    """Parse `prune --list` output into the archive names kept and pruned."""
    kept, pruned = [], []
    for message in result.messages:
        text = message.get("message", "")
        match = PRUNE_LINE_RE.match(text)
        if not match:
            continue
        (kept if match.group(1).startswith(("Keeping", "Would keep")) else pruned).append(
            match.group(2)
        )
    return {"kept": kept, "pruned": pruned}


# --- the other programs a job runs around borg (hooks) ---------------------------------------
# They start here too, so every process this app starts is started in one place: argv as
# data, no shell, stdin on /dev/null, a session of their own, and a stop that takes the
# whole process group (a hook's own children included).

PROGRAM_TAIL_LINES = 20
PROGRAM_LINE_CHARS = 500
PROGRAM_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


@dataclass
class ProgramRun:
    rc: int | None  # None: it could not be started
    tail: list[str]
    seconds: float
    timed_out: bool = False
    stopped: bool = False  # a cancel stopped it
    not_started: str = ""  # why it could not start


def run_program(
    argv: list[str],
    *,
    env: dict[str, str],
    timeout: float,
    should_stop: Callable[[], bool] | None = None,
    cwd: str = "/",
    keep_lines: int = PROGRAM_TAIL_LINES,
) -> ProgramRun:
    """Run one program to its end (or its timeout, or a stop request), keeping the last
    lines of its output (stdout and stderr together) and nothing more in memory."""
    started = time.monotonic()
    try:
        proc = _start_in_own_group(argv, env, cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        return ProgramRun(None, [], 0.0, not_started=exc.strerror or str(exc))
    tail: deque[str] = deque(maxlen=keep_lines)
    lines = _Lines(lambda raw: tail.append(raw.decode("utf-8", "replace")[:PROGRAM_LINE_CHARS]))
    end_at, kill_at, exited_at = started + timeout, None, None
    timed_out = stopped = False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            open_stream = True
            while open_stream or proc.poll() is None:
                if open_stream:
                    for key, _ in sel.select(timeout=0.2):
                        data = os.read(key.fd, 65536)
                        if data:
                            lines.feed(data)
                        else:
                            sel.unregister(key.fileobj)
                            open_stream = False
                else:
                    time.sleep(0.05)
                now = time.monotonic()
                if open_stream and proc.poll() is not None:
                    # it ended, but something it left in the background holds the pipe
                    exited_at = exited_at or now
                    open_stream = now - exited_at < 1.0
                if kill_at is None and (now >= end_at or (should_stop and should_stop())):
                    timed_out, stopped = now >= end_at, now < end_at
                    _signal_group(proc, signal.SIGTERM)
                    kill_at = now + PROGRAM_GRACE
                elif kill_at is not None and now >= kill_at:
                    _signal_group(proc, signal.SIGKILL)
                    kill_at = float("inf")
                    open_stream = False  # a grandchild may keep the pipe open: stop reading
    except BaseException:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    rc = proc.wait()
    if kill_at is not None:
        _signal_group(proc, signal.SIGKILL)  # what the program left behind in its group
    lines.close()
    return ProgramRun(rc, list(tail), time.monotonic() - started, timed_out, stopped)


def _start_in_own_group(argv, env, cwd, *, stdout, stderr, stdin=None) -> subprocess.Popen:
    """argv as data, no shell, stdin /dev/null unless given, no inherited descriptors, and a
    session of its own (so a stop reaches the whole group)."""
    return subprocess.Popen(
        argv,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
    )


def _signal_group(proc: subprocess.Popen, signo: int) -> None:
    try:
        os.killpg(proc.pid, signo)
    except (ProcessLookupError, PermissionError):
        pass


class Background:
    """A program that runs beside borg (a database dump writing into a named pipe, a restore
    tool reading borg's output): started at once, its stderr's last lines kept by a thread,
    waited for or stopped with its whole process group."""

    def __init__(self, argv: list[str], *, env: dict[str, str], stdin=None, cwd: str = "/"):
        self.argv = argv
        self.tail: deque[str] = deque(maxlen=PROGRAM_TAIL_LINES)
        try:
            self.proc = _start_in_own_group(
                argv, env, cwd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise BorgError(f"Could not start {argv[0]}: {exc.strerror}.") from None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        lines = _Lines(lambda raw: self.tail.append(raw.decode("utf-8", "replace")[:500]))
        with self.proc.stderr:
            for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):
                lines.feed(chunk)
        lines.close()

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=5)
        return rc

    def stop(self) -> None:
        """SIGTERM to its group, SIGKILL after the grace; then reaped."""
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout=PROGRAM_GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(timeout=5)
