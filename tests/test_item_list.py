"""The file index's lister (borgapp.itemlist) writes, byte for byte, what `borg list` writes
for the same format: on awkward names, links, special files, owners without a name, odd
times, a file that `borg check --repair` left broken. Real borg, real repositories."""

import json
import os
import random
import stat
import subprocess
import sys

import pytest

from borgapp import borg, itemlist
from tests.helpers import PASSPHRASE, ROOT

BORG = str(ROOT / ".venv" / "bin" / "borg")
ROOT_USER = os.geteuid() == 0


@pytest.fixture
def config(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    return borg.BorgConfig(binary=BORG, base_dir=str(base), lock_wait=5)


def run_borg(config, *args: str, env: dict | None = None) -> str:
    done = subprocess.run(
        [BORG, *args], capture_output=True, check=False,
        env={**borg.environment(config), "BORG_PASSPHRASE": PASSPHRASE, **(env or {})},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def listing(config, location: str, archive: str, tmp_path, fast: bool) -> bytes:
    """What index_list_cmd writes, through the one door (passphrase over a pipe)."""
    out = tmp_path / f"out-{fast}"
    with open(out, "wb") as handle:
        borg.run(borg.index_list_cmd(location, archive, handle.fileno(), fast=fast), config,
                 passphrase=PASSPHRASE)  # fmt: skip
    return out.read_bytes()


def awkward_tree(src) -> None:
    """Names, links, special files, modes, owners and times a server has."""
    deep = src / "srv" / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "plain.txt").write_text("plain")
    (src / "empty-dir").mkdir()
    (src / "empty.txt").write_bytes(b"")
    (src / "line\nbreak.txt").write_text("newline in the name")
    (src / "tab\tand\\slash.txt").write_text("tab")
    (src / ("long" * 60)[:250]).write_text("long name")
    (src / "grüße-✓.txt").write_text("unicode")
    raw = os.fsencode(src)
    with open(raw + b"/caf\xe9.txt", "wb") as handle:  # latin-1, not UTF-8
        handle.write(b"latin-1 name")
    os.symlink(b"target-\xff\xfe", raw + b"/bad-target-link")  # a target that is not UTF-8
    (src / "dangling").symlink_to("nowhere/at/all")
    (src / "to-dir").symlink_to("srv/a")
    (src / "to-unicode").symlink_to("grüße-✓.txt")  # its size: characters, not bytes
    (src / "shared.bin").write_bytes(os.urandom(3000))
    for name in ("hard-1", "hard-2"):
        os.link(src / "shared.bin", src / name)
    os.mkfifo(src / "pipe")
    os.link(src / "pipe", src / "pipe-hard")  # a hardlinked fifo: listed as `h`
    for name, bits in (("setuid", 0o4755), ("setgid", 0o2750), ("sticky", 0o1777),
                       ("none", 0o000), ("s-no-x", 0o6644)):  # fmt: skip
        (src / name).write_text(name)
        os.chmod(src / name, bits)
    if ROOT_USER:
        os.mknod(src / "null-dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mknod(src / "block-dev", stat.S_IFBLK | 0o600, os.makedev(7, 0))
        (src / "nameless-owner").write_text("owned by a uid with no name")
        os.chown(src / "nameless-owner", 54321, 54322)
    # times at the edges of rounding a float to the microsecond, before 1970, far ahead
    times = [0, -1, -(10**9), 999_999_500, 999_999_499, 1_700_000_000_999_999_500,
             1_700_000_000_000_000_500, 1_700_000_000_000_001_500,
             4_102_444_800_123_456_789]  # fmt: skip
    rng = random.Random(16)
    times += [rng.randrange(0, 2_000_000_000) * 10**9 + rng.randrange(10**9) for _ in range(400)]
    spread = src / "times"
    spread.mkdir()
    for index, moment in enumerate(times):
        (spread / f"t{index}").write_text("t")
        os.utime(spread / f"t{index}", ns=(moment, moment))


def test_the_lister_writes_what_borg_list_writes(config, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    awkward_tree(src)
    location = str(tmp_path / "repo")
    borg.run(borg.init_cmd(location, "repokey-blake2"), config, passphrase=PASSPHRASE)
    run_borg(config, "create", f"{location}::plain", str(src))
    run_borg(config, "create", "--numeric-ids", f"{location}::numeric", str(src))

    # a file whose chunk is lost and replaced by zeros in a repair: borg calls it broken
    dump = tmp_path / "dump.json"
    run_borg(config, "debug", "dump-archive", f"{location}::plain", str(dump))
    items = json.loads(dump.read_text())["_items"]
    lost = next(i for i in items if i["path"].endswith("srv/a/b/c/d/plain.txt"))["chunks"][0][0]
    lost = lost.removeprefix("\x7f")  # the dump marks bytes so, then gives them in hex
    run_borg(config, "debug", "delete-obj", location, lost)
    run_borg(config, "check", "--repair", location,
             env={"BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "YES"})  # fmt: skip

    for archive in ("plain", "numeric"):
        fast = listing(config, location, archive, tmp_path, fast=True)
        slow = listing(config, location, archive, tmp_path, fast=False)
        fields = fast.split(b"\0")[:-1]
        width = len(itemlist.CONTENT_FIELDS)
        assert len(fields) == width * len(items)  # every item, and its content identity
        records = [field for start in range(0, len(fields), width)
                   for field in fields[start : start + width - 1]] + [b""]  # fmt: skip
        assert b"\0".join(records) == slow, archive  # what borg writes, byte for byte
        # each file's content identity: a digest of the ids of the chunks borg holds for it
        # (after the repair: the zeros in place of the lost one); none without chunks
        run_borg(config, "debug", "dump-archive", f"{location}::{archive}", str(dump))
        held = json.loads(dump.read_text())["_items"]
        told = fields[width - 1 :: width]
        assert told == [
            itemlist.content([[bytes.fromhex(c[0].removeprefix("\x7f"))] for c in item["chunks"]])
            if "chunks" in item else b""
            for item in held
        ]  # fmt: skip
        assert len(set(told)) > 10 and b"" in told
        # what the comparison covered: a hardlink, a broken file, a name that is not UTF-8,
        # a link target that is not, and (as root) an owner that has no name
        assert b"hrw-r--r--" in records and b"prw-r--r--" in records  # fifo and its hardlink
        assert b"broken" in records and b"caf?.txt" in b"".join(records)
        assert b"target-??" in records
        if ROOT_USER and archive == "plain":
            assert b"54321" in records and b"54322" in records
        if archive == "numeric":
            assert b"root" not in records


def test_the_fast_way_is_the_one_taken(config, tmp_path):
    """The comparison above means something only if the lister did not hand the call to
    borg's own formatter: it says so in borg's debug log, once per listing."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    location = str(tmp_path / "repo")
    borg.run(borg.init_cmd(location, "none"), config)
    run_borg(config, "create", f"{location}::one", str(src))
    command = borg.index_list_cmd(location, "one", 1)
    assert command.program[:2] == (sys.executable, "-I")
    argv = command.argv(config)
    done = subprocess.run([*argv[:3], "list", "--debug", *argv[4:]], capture_output=True,
                          env=borg.environment(config), check=True)  # fmt: skip
    assert done.stdout.count(b"\0") == 2 * len(itemlist.CONTENT_FIELDS)
    assert b"without borg's formatter" in done.stderr
    # another format is borg's own listing, untouched
    other = [*argv[:3], "list", "--format={path}{NL}", "--", f"{location}::one"]
    plain = subprocess.run(other, capture_output=True, env=borg.environment(config), check=True)
    assert plain.stdout.decode().splitlines() == [str(src).lstrip("/"),
                                                  str(src / "a.txt").lstrip("/")]  # fmt: skip
    assert b"without borg's formatter" not in plain.stderr


def test_a_missing_archive_is_borgs_own_error(config, tmp_path):
    location = str(tmp_path / "repo")
    borg.run(borg.init_cmd(location, "repokey-blake2"), config, passphrase=PASSPHRASE)
    with pytest.raises(borg.ArchiveMissing):  # borg's message id, mapped as for borg's own
        listing(config, location, "no-such-archive", tmp_path, fast=True)
    with pytest.raises(borg.WrongPassphrase):
        borg.run(borg.index_list_cmd(location, "x", 1), config, passphrase="not the passphrase")
    missing = str(tmp_path / "no-repo")
    with pytest.raises(borg.RepositoryMissing):
        borg.run(borg.index_list_cmd(missing, "x", 1), config, passphrase=PASSPHRASE)


def test_a_partial_file_of_a_checkpoint_is_left_out_as_borg_does():
    """borg lists a checkpoint's partial files only when asked to (--consider-part-files,
    which the lister leaves to borg)."""
    formatter = itemlist.Formatter(lambda ns: ns)
    whole = {b"path": b"a", b"mode": 0o100644, b"mtime": 0, b"user": b"u", b"group": b"g",
             b"size": 5}  # fmt: skip
    part = {**whole, b"path": b"a.borg_part_1", b"part": 1}
    assert formatter.records([whole, part]) == formatter.records([whole])
    assert formatter.records([whole]).count(b"\0") == len(itemlist.FIELDS)
