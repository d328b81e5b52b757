"""Pure input rules shared by the models, the operations and borg.py (defence in depth).

Each function returns the cleaned value or raises InvalidInput with a message that names
the problem. Nothing here touches Django models.
"""

import ipaddress
import os
import re
import shlex
import shutil
from argparse import ArgumentTypeError
from pathlib import Path

from borgapp.errors import InvalidInput, OperationError

ARCHIVE_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CHECKPOINT_SUFFIX_RE = re.compile(r"\.checkpoint(\.\d+)?$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SSH_RE = re.compile(
    r"^ssh://(?P<user>[^@/:\s]+)@(?P<host>\[[^\]]+\]|[^:/\s\[\]]+)(?::(?P<port>\d{1,5}))?(?P<path>/.*)$"
)
USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
FORBIDDEN_IN_PATH = ("::", "{", "}")
KEEP_WITHIN_RE = re.compile(r"^[1-9][0-9]{0,5}[HdwmyS]$")


def no_control_chars(value: str, what: str) -> None:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InvalidInput(f"{what} must not contain control characters or newlines.")


def validate_name(value: str, what: str = "Name") -> str:
    """Names of repositories, policies and schedules: letters, digits, '.', '_', '-'."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidInput(
            f"{what} {value!r} is not allowed: use 1 to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return value


def validate_archive_part(value: str, what: str = "Archive name") -> str:
    """The user-chosen part of an archive name (prefix or name) (SEC-05)."""
    if not isinstance(value, str) or not ARCHIVE_PART_RE.match(value):
        raise InvalidInput(
            f"{what} {value!r} is not allowed: use 1 to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no spaces, placeholders or slashes)."
        )
    if CHECKPOINT_SUFFIX_RE.search(value):
        raise InvalidInput(f"{what} {value!r} must not end in '.checkpoint' (borg hides those).")
    return value


def validate_existing_archive_name(value: str) -> str:
    """An archive name read from a repository: anything borg can address safely."""
    if not isinstance(value, str) or not value or len(value) > 255:
        raise InvalidInput("Archive name must be 1 to 255 characters.")
    no_control_chars(value, "Archive name")
    if "/" in value or "::" in value or "{" in value or "}" in value:
        raise InvalidInput(f"Archive name {value!r} contains '/', '::' or a placeholder brace.")
    return value


def absolute_path(value: str, what: str) -> str:
    """An absolute path without '..', normalised ('/srv//data/' is '/srv/data')."""
    return os.path.normpath(_validate_abs_path(value, what))


def is_within(path, folder) -> bool:
    """Whether `path` is `folder` or below it, by their names alone (no link followed)."""
    return Path(os.path.normpath(path)).is_relative_to(os.path.normpath(folder))


def _validate_abs_path(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{what} is required.")
    no_control_chars(value, what)
    if not value.startswith("/"):
        raise InvalidInput(f"{what} {value!r} must be an absolute path.")
    if any(part == ".." for part in value.split("/")):
        raise InvalidInput(f"{what} {value!r} must not contain '..'.")
    for bad in FORBIDDEN_IN_PATH:
        if bad in value:
            raise InvalidInput(f"{what} {value!r} must not contain {bad!r}.")
    return value


def _validate_host(host: str) -> str:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidInput(f"Host {host!r} is not a valid IPv6 address.") from None
        return host
    try:
        ipaddress.IPv4Address(host)
        return host
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(HOST_LABEL_RE.match(label) for label in labels):
        raise InvalidInput(f"Host {host!r} is not a valid host name.")
    return host


def is_remote(location: str) -> bool:
    return location.startswith("ssh://")


def validate_location(
    location: str, roots: list[Path] | None = None, what: str = "Repository location"
) -> str:
    """A repository location by the strict grammar of SEC-04, in its one spelling.

    Either `ssh://user@host[:port]/path` (user and host never starting with '-') or an
    absolute local path. With `roots` (every caller but the argv builder passes the
    configured REPOSITORY_ROOTS) a local path must lie under one of them and comes back
    resolved, so a symlinked spelling never registers the same repository twice.
    """
    if not isinstance(location, str) or not location:
        raise InvalidInput("Repository location is required.")
    no_control_chars(location, "Repository location")
    if location.startswith("ssh://"):
        match = SSH_RE.match(location)
        if not match:
            raise InvalidInput(
                f"Repository location {location!r} is not of the form ssh://user@host[:port]/path."
            )
        if not USER_RE.match(match["user"]):
            raise InvalidInput(f"SSH user {match['user']!r} is not allowed.")
        _validate_host(match["host"])
        if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
            raise InvalidInput(f"SSH port {match['port']} is out of range.")
        _validate_abs_path(match["path"], "Repository path")
        path = re.sub(r"/+", "/", match["path"])
        port = f":{int(match['port'])}" if match["port"] and int(match["port"]) != 22 else ""
        # one spelling per repository, so one repository can never be registered twice
        return f"ssh://{match['user']}@{match['host'].lower()}{port}{path.rstrip('/') or '/'}"
    if "://" in location or location.startswith("-"):
        raise InvalidInput(
            f"Repository location {location!r} must be an absolute path or ssh://user@host/path."
        )
    _validate_abs_path(location, "Repository location")
    cleaned = os.path.normpath(location)
    if roots is not None:
        return str(require_under_roots(cleaned, roots, what))
    return cleaned


def real_path(path, what: str) -> str:
    """`os.path.realpath` of a path a user gave, refusing what the OS cannot take (a NUL byte
    makes realpath raise; control characters are never a real path here)."""
    if not isinstance(path, str) or not path:
        raise InvalidInput(f"{what} must be a non-empty path.")
    no_control_chars(path, what)
    return os.path.realpath(path)


def require_under_roots(path: str, roots: list[Path], what: str) -> Path:
    """Resolve `path` (following symlinks of what exists) and require it inside a root."""
    resolved = Path(real_path(path, what))
    for root in roots:
        root_real = Path(os.path.realpath(root))
        if resolved != root_real and resolved.is_relative_to(root_real):
            return resolved
    allowed = ", ".join(str(r) for r in roots) or "(none configured)"
    raise InvalidInput(f"{what} {path!r} is not under an allowed root ({allowed}).")


def validate_source_path(value: str) -> str:
    return _validate_abs_path(value, "Source path")


def validate_archive_path(value: str) -> str:
    """A path inside an archive (extract subsets): relative, no '..'."""
    if not isinstance(value, str) or not value.strip("/"):
        raise InvalidInput("Archive path must not be empty.")
    no_control_chars(value, "Archive path")
    cleaned = value.strip("/")
    if any(part == ".." for part in cleaned.split("/")):
        raise InvalidInput(f"Archive path {value!r} must not contain '..'.")
    return cleaned


def validate_exclude_pattern(value: str) -> str:
    """An exclude pattern as borg itself parses it (its own parser: style prefixes, and a
    `re:` pattern compiled by Python's re as borg does), so a pattern borg would die on at
    start-up is refused when it is saved, not at 2 a.m."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("Exclude pattern must not be empty.")
    no_control_chars(value, "Exclude pattern")
    # borg's package takes ~80 ms to import: paid only by a process that checks a pattern
    from borg.patterns import parse_exclude_pattern

    try:
        parse_exclude_pattern(value)
    except (ValueError, re.error) as exc:
        raise InvalidInput(f"Exclude pattern {value!r} is not valid for borg: {exc}.") from None
    styled = len(value) > 2 and value[2] == ":" and value[:2].isalnum()  # borg's own test
    if styled and not value[3:].strip():
        raise InvalidInput(f"Exclude pattern {value!r} has a style but no pattern.")
    return value


def validate_compression(value: str) -> str:
    """A compression spec as borg itself parses it (its CompressionSpec: the algorithms, their
    level ranges, auto and obfuscate), so a spec borg would refuse is refused when saved."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("Compression must not be empty.")
    no_control_chars(value, "Compression")
    from borg.compress import CompressionSpec  # borg's package: imported only to check

    try:
        CompressionSpec(value)
    except (ValueError, ArgumentTypeError) as exc:
        raise InvalidInput(
            f"Compression {value!r} is not valid for borg: {exc or 'bad arguments'} (choices: "
            "none, lz4, zstd[,1-22], zlib[,0-9], lzma[,0-9], auto,SPEC, obfuscate,N,SPEC)."
        ) from None
    return value


def validate_keep_within(value: str) -> str:
    if value and not KEEP_WITHIN_RE.match(value):
        raise InvalidInput(
            f"keep_within {value!r} must be a number followed by H, d, w, m or y (e.g. 7d)."
        )
    return value


MAX_PASSPHRASE = 1024


def validate_passphrase(value: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput("Passphrase must be text.")
    if len(value) > MAX_PASSPHRASE:
        raise InvalidInput(f"Passphrase is longer than {MAX_PASSPHRASE} characters.")
    if "\n" in value or "\r" in value or "\0" in value:
        raise InvalidInput("Passphrase must not contain newlines or NUL characters.")
    return value


CRON_KEYWORDS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def validate_cron(value: str) -> str:
    """A standard five-field cron expression (or @daily and friends)."""
    from croniter import croniter

    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("Cron expression must not be empty.")
    text = " ".join(value.split())
    expanded = CRON_KEYWORDS.get(text.lower(), text)
    if len(expanded.split()) != 5:
        raise InvalidInput(
            f"Cron expression {value!r} needs five fields: minute hour day-of-month month "
            "day-of-week (for example '0 2 * * *' is every day at 02:00)."
        )
    if not croniter.is_valid(expanded):
        raise InvalidInput(
            f"Cron expression {value!r} is not valid: each field takes numbers in its range "
            "(minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-6), '*', lists, ranges "
            "and steps such as '*/15'."
        )
    from datetime import UTC, datetime

    from croniter import CroniterBadDateError

    try:
        croniter(expanded, datetime.now(UTC)).get_next(datetime)
    except CroniterBadDateError:
        raise InvalidInput(
            f"Cron expression {value!r} never matches a real date (for example 31 February)."
        ) from None
    return text


def describe_cron(value: str) -> str:
    """`0 2 * * *` -> `At 02:00 AM`."""
    from cron_descriptor import Options, get_description

    options = Options()
    options.use_24hour_time_format = True
    try:
        return get_description(CRON_KEYWORDS.get(value.strip().lower(), value), options)
    except Exception:  # the library raises its own types; a bad expression is caught earlier
        return value


def validate_timezone(value: str) -> str:
    from zoneinfo import ZoneInfo, available_timezones

    if not isinstance(value, str) or value not in available_timezones() and value != "UTC":
        raise InvalidInput(f"Time zone {value!r} is unknown; use a name like UTC or Europe/Berlin.")
    ZoneInfo(value)
    return value


# --- hooks: commands an admin sets to run before and after a schedule's jobs -----------------

HOOK_STAGES = ("before", "after_success", "after_failure", "always_after")
MAX_HOOKS_PER_STAGE = 10
MAX_HOOK_CHARS = 4096
HOOK_TIMEOUT_MAX = 24 * 3600


def hook_argv(line) -> list[str]:
    """A hook command as argv: a list is taken as it is, a line typed in a form is split as a
    shell would split it (quotes, backslashes), without running a shell, so `;`, `|`, `$(...)`
    and `>` are plain arguments. The program must exist: a typo is refused when saved, not
    found at 2 a.m. (a name without a slash is looked up on this server's PATH)."""
    if isinstance(line, str):
        no_control_chars(line, "Hook command")
        if len(line) > MAX_HOOK_CHARS:
            raise InvalidInput(f"A hook command is longer than {MAX_HOOK_CHARS} characters.")
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise InvalidInput(f"Hook command {line!r} cannot be split: {exc}.") from None
    elif isinstance(line, list) and line and all(isinstance(a, str) for a in line):
        argv = list(line)
        for arg in argv:
            no_control_chars(arg, "Hook command")
        if sum(len(a) + 1 for a in argv) > MAX_HOOK_CHARS:
            raise InvalidInput(f"A hook command is longer than {MAX_HOOK_CHARS} characters.")
    else:
        raise InvalidInput("A hook command is a line of text or a list of strings.")
    if not argv:
        raise InvalidInput("A hook command must not be empty.")
    program = argv[0]
    if "/" in program:
        if not os.path.isabs(program):
            raise InvalidInput(f"Hook program {program!r}: give an absolute path or a name.")
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise InvalidInput(f"Hook program {program} does not exist or is not executable.")
    elif shutil.which(program) is None:
        raise InvalidInput(
            f"Hook program {program!r} is not found on this server's PATH; give its absolute path."
        )
    return argv


def hook_list(value, stage: str) -> list[list[str]]:
    if value in (None, ""):
        return []
    if not isinstance(value, list):
        raise InvalidInput(f"The {stage.replace('_', '-')} hooks must be a list of commands.")
    if len(value) > MAX_HOOKS_PER_STAGE:
        raise InvalidInput(f"At most {MAX_HOOKS_PER_STAGE} {stage.replace('_', '-')} hooks.")
    return [hook_argv(line) for line in value]


def hook_timeout(value) -> int:
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise InvalidInput("The hook timeout must be a whole number of seconds.") from None
    if not 1 <= seconds <= HOOK_TIMEOUT_MAX:
        raise InvalidInput(f"The hook timeout must be between 1 and {HOOK_TIMEOUT_MAX} seconds.")
    return seconds


DATABASE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.$-]{0,62}$")


def validate_database_name(value) -> str:
    """A database name as it becomes a file name in the archive: letters, digits and _ . $ -,
    not starting with a dot or dash (so it can never be an option or a path)."""
    if not isinstance(value, str) or not DATABASE_NAME_RE.match(value):
        raise InvalidInput(
            f"Database name {value!r} must be 1-63 letters, digits, _ . $ or -, not starting "
            "with . or -."
        )
    return value


def require_a_source(sources: list[str]) -> None:
    """Fail before borg runs when no source exists: borg would only warn, store an empty
    archive that counts as the last backup, and a typo in a schedule would mean silent empty
    archives every night. Some missing is borg's warning (the job ends as a warning)."""
    missing = [path for path in sources if not os.path.lexists(path)]
    if missing and len(missing) == len(sources):
        listed = ", ".join(missing)
        raise OperationError(
            f"None of the sources exists ({listed}): nothing was backed up and no archive "
            "was made. Check the paths for a typo.",
            "sources_missing",
            result={"missing_sources": missing},
        )
