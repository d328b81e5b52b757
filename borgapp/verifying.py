"""Verify-restore (REL-17), the part that runs where the data is: on the center for its own
backups, on a host's agent for that host's. Restore a random sample of an archive's files
into a private sandbox and compare each with the archive's own checksum and with the source
as it is now, then restore each database dump into a scratch database and compare its tables
with the source's (dumps.verify).

`run(command, on_line=None)` runs borg for the caller (its passphrase, progress, cancel and
deadline): the center's job context or the agent's reporter. No Django here.
"""

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from borgapp import borg, dumps, heldir, validation
from borgapp.errors import OperationError


def choose_sample(files: list[tuple[str, int]], count: int, max_bytes: int) -> list[str]:
    """Up to `count` random regular files whose sizes add up to at most `max_bytes`."""
    rng = random.SystemRandom()
    order = list(files)
    rng.shuffle(order)
    chosen, total = [], 0
    for path, size in order:
        if len(chosen) >= count:
            break
        if total + (size or 0) <= max_bytes:
            chosen.append(path)
            total += size or 0
    return sorted(chosen)


def _nameable(path: str) -> bool:
    if "?" in path:
        return False
    try:
        validation.validate_archive_path(path)
    except validation.InvalidInput:
        return False
    return True


def is_dump(path: str) -> bool:
    return path.startswith(f"{dumps.ARCHIVE_ROOT}/")


def verify(run, location: str, archive: str, files: list[tuple[str, int]], dumped: list[str],
           *, sample_files: int, sample_percent: int | None, sample_max_bytes: int,
           sandbox_root: Path, sources: dict, elsewhere: str, tag: str) -> dict:  # fmt: skip
    """Verify one archive: `files` are its regular files (path, size) outside the dumps,
    `dumped` its dumps' paths, `sources` the database sources reachable here by name
    (`elsewhere`: where the others are, for the report). Returns the result, or raises
    OperationError (verify_failed) with it when anything is wrong."""
    count = sample_files
    if sample_percent:
        count = math.ceil(len(files) * sample_percent / 100)
    # a name with a control character (a newline) cannot be named to borg as a path, and
    # one with '?' may be a non-UTF-8 name that borg lists with '?' for its bytes
    usable = [(path, size) for path, size in files if _nameable(path)]
    sample = choose_sample(usable, count, sample_max_bytes)
    result = {"archive_name": archive, "files_in_archive": len(files), "sampled": len(sample)}
    if len(usable) < len(files):
        result["not_sampled"] = len(files) - len(usable)
    problems = []
    if sample:
        problems = compare_files(run, location, archive, sample, sandbox_root, tag)
    else:
        result["note"] = "No regular file fits the sample."
    chosen = set(sample)
    result.update(bytes=sum(size or 0 for path, size in files if path in chosen), files=sample)
    if dumped:
        result["databases"] = verify_dumps(run, location, archive, dumped, sources, elsewhere,
                                           tag, problems)  # fmt: skip
    result["problems"] = problems
    if problems:
        named = "; ".join(f"{x['path']}: {x['problem']}" for x in problems[:10])
        raise OperationError(
            f"Verify-restore of {archive} found {len(problems)} problem(s): {named}",
            "verify_failed",
            result=result,
        )
    return result


def verify_dumps(run, location: str, archive: str, paths: list[str], sources: dict,
                 elsewhere: str, tag: str, problems: list) -> list:  # fmt: skip
    """Each database dump restored into a scratch database and compared (dumps.verify)."""
    checked = []
    for path in paths:
        try:
            _, source_name, database = dumps.parse_archive_path(path)
        except validation.InvalidInput:
            continue
        source = sources.get(source_name)
        if source is None:
            checked.append({"path": path, "note": f"its database source is {elsewhere}"})
            continue

        def feed(fd: int, path=path) -> None:
            run(borg.extract_stdout_cmd(location, archive, path, fd))

        with tempfile.TemporaryDirectory(prefix="opscenter-") as scratch:
            try:
                report = dumps.verify(source, database, Path(scratch), tag=tag, feed=feed)
            except OperationError as exc:
                problems.append({"path": path, "problem": f"the dump does not restore: {exc}"})
                continue
        if report["missing_tables"]:
            missing = ", ".join(report["missing_tables"][:10])
            problems.append({"path": path, "problem": f"tables missing from the dump: {missing}"})
        checked.append({"path": path, **report})
    return checked


def compare_files(run, location: str, archive: str, sample: list[str], root: Path,
                  tag: str) -> list:  # fmt: skip
    """The sampled files restored into a private sandbox under `root` and compared."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    heldir.require_private_path(root, "Sandbox")
    # a private directory with a name nobody can guess (mkdtemp: 0700), held like a target
    sandbox = Path(tempfile.mkdtemp(prefix=f"job-{tag}-", dir=root))
    try:
        sandbox_fd = heldir.hold_empty_dir(sandbox, "Sandbox")
        try:
            return _compare_sample(run, location, archive, sample, sandbox, sandbox_fd)
        finally:
            os.close(sandbox_fd)
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def held_dir(parent_fd: int, name: str) -> int:
    """A new private directory inside a held one, itself held."""
    os.mkdir(name, 0o700, dir_fd=parent_fd)
    return heldir.hold_empty_dir(Path(name), "Sandbox", dir_fd=parent_fd)


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _damaged(run, location: str, archive: str, paths: list[str], sandbox: Path,
             sandbox_fd: int) -> list:  # fmt: skip
    """After borg stopped on damaged data: restore the files one by one to name them."""
    problems = []
    for index, path in enumerate(paths):
        target = sandbox / f"one-{index}"
        fd = held_dir(sandbox_fd, target.name)
        try:
            command = borg.extract_cmd(location, archive, str(target), [path])
            run(replace(command, cwd_fd=fd))
        except borg.IntegrityError as exc:
            problems.append({"path": path, "problem": f"damaged in the repository: {exc.message}"})
        finally:
            os.close(fd)
    return problems


def _compare_sample(run, location: str, archive: str, sample: list[str], sandbox: Path,
                    sandbox_fd: int) -> list:  # fmt: skip
    restored = sandbox / "restore"
    fd = held_dir(sandbox_fd, restored.name)
    try:
        command = borg.extract_cmd(location, archive, str(restored), sample)
        run(replace(command, cwd_fd=fd))
    except borg.IntegrityError:
        return _damaged(run, location, archive, sample, sandbox, sandbox_fd)
    finally:
        os.close(fd)
    sums = {}

    def collect(raw: bytes) -> None:
        if raw.strip():
            item = json.loads(raw)
            sums[item.get("path")] = item.get("sha256")

    run(borg.list_items_cmd(location, archive, sample, checksums=True), on_line=collect)
    problems = []
    for path in sample:
        copy = restored / path
        if not copy.is_file():
            problems.append({"path": path, "problem": "not restored"})
            continue
        digest = _sha256(copy)
        if digest != sums.get(path):
            problems.append({"path": path, "problem": "restored bytes differ from the archive"})
            continue
        source = Path("/" + path)
        try:
            same = source.is_file() and _sha256(source) == digest
        except OSError as exc:
            problems.append({"path": path, "problem": f"source unreadable: {exc.strerror}"})
            continue
        if not source.exists():
            problems.append({"path": path, "problem": "missing at the source now"})
        elif not same:
            problems.append({"path": path, "problem": "differs from the source as it is now"})
    return problems
