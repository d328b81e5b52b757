"""Restores in place with real borg: a tree where files changed, were deleted, were added and
one file and one folder were replaced by symlinks pointing outside. For each policy the preview
(from `borg list --json-lines`) equals what the restore then does, the outside is never written
through, and restored files keep their bytes, modes, owners, mtimes, xattrs and hardlinks."""

import errno
import json
import os
import shutil
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from borgapp import inplace

BORG = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "borg")
PASSPHRASE = "correct horse battery staple"
TZ = "Europe/Berlin"  # borg prints naive local time: a zone with an offset tests the conversion
DATA = "srv/data"
WEIRD = b"\xff\xfeweird.txt"  # not UTF-8: borg lists it as "??weird.txt"
WEIRD_SHOWN = f"{DATA}/??weird.txt"
T0 = 1_600_000_000_123_456_789
T1 = 1_700_000_100_000_000_001
ROUNDED = 1_700_000_000_999_999_700  # borg lists this as ...:21.000000 (rounded, not floored)

FILES = {
    f"{DATA}/a.txt": (b"alpha\n", ROUNDED),
    f"{DATA}/b.txt": (b"bravo\n", T0 + 1_000),
    f"{DATA}/c.txt": (b"charlie\n", T0 + 2_000),
    f"{DATA}/sub/deep/d.txt": (b"delta!\n", T0 + 3_000),
    f"{DATA}/sub/deep/e.txt": (b"echo\n", T0 + 4_000),
    f"{DATA}/gone/g1.txt": (b"golf\n", T0 + 5_000),
    f"{DATA}/gone/inner/g2.txt": (b"golf two\n", T0 + 6_000),
    f"{DATA}/links/h1": (b"hotel, twice\n", T0 + 7_000),
    f"{DATA}/xattr.txt": (b"india\n", T0 + 8_000),
    f"{DATA}/secret.txt": (b"juliett\n", T0 + 9_000),
    f"{DATA}/victim.txt": (b"kilo\n", T0 + 10_000),
    f"{DATA}/folder2/f.txt": (b"lima\n", T0 + 11_000),
    f"{DATA}/was_file.txt": (b"mike\n", T0 + 12_000),
    "srv/other/o.txt": (b"outside the selection\n", T0 + 13_000),
}
WEIRD_CONTENT = (b"not utf-8\n", T0 + 14_000)


# --- borg ----------------------------------------------------------------------------------------


def borg(archive, *args, cwd=None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [BORG, *[str(a) for a in args]],
        env=archive.env,
        cwd=cwd,
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def listing(archive, selected) -> list[inplace.Entry]:
    out = borg(archive, "list", "--json-lines", archive.location, *selected).stdout
    tz = ZoneInfo(TZ)
    return [inplace.entry_from_listing(json.loads(line), tz) for line in out.splitlines()]


def extract(archive, stage: Path, selected) -> None:
    borg(archive, "extract", archive.location, *selected, cwd=stage)


# --- the trees -----------------------------------------------------------------------------------


def build_tree(root: Path) -> None:
    """The tree as it was backed up; built the same way for every test, mtimes included."""
    for rel, (content, _) in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    weird = os.fsencode(root / DATA) + b"/" + WEIRD
    with open(weird, "wb") as handle:
        handle.write(WEIRD_CONTENT[0])
    os.link(root / DATA / "links/h1", root / DATA / "links/h2")
    (root / DATA / "link").symlink_to("a.txt")
    os.mkfifo(root / DATA / "pipe")
    os.setxattr(root / DATA / "xattr.txt", "user.color", b"blue")
    os.chmod(root / DATA / "secret.txt", 0o640)
    os.chown(root / DATA / "secret.txt", 1234, 1234)
    for rel, (_, mtime) in FILES.items():
        os.utime(root / rel, ns=(mtime, mtime))
    os.utime(weird, ns=(WEIRD_CONTENT[1], WEIRD_CONTENT[1]))
    os.utime(root / DATA / "link", ns=(T0, T0), follow_symlinks=False)
    os.utime(root / DATA / "pipe", ns=(T0 + 15_000, T0 + 15_000))


def change_tree(root: Path, outside: Path) -> None:
    """What happened to the live tree after the backup."""
    data = root / DATA
    (data / "b.txt").write_bytes(b"bravo, changed\n")
    os.utime(data / "b.txt", ns=(T1, T1))
    (data / "sub/deep/d.txt").write_bytes(b"DELTA!\n")  # same size, new mtime
    os.utime(data / "sub/deep/d.txt", ns=(T1, T1))
    weird = os.fsencode(data) + b"/" + WEIRD
    with open(weird, "wb") as handle:
        handle.write(b"changed\n")
    for rel in ("c.txt", "sub/deep/e.txt", "links/h1", "links/h2", "xattr.txt", "secret.txt"):
        (data / rel).unlink()
    shutil.rmtree(data / "gone")
    (data / "victim.txt").unlink()
    (data / "victim.txt").symlink_to(outside / "precious.txt")
    shutil.rmtree(data / "folder2")
    (data / "folder2").symlink_to(outside / "dir")
    (data / "was_file.txt").unlink()
    (data / "was_file.txt").mkdir()
    (data / "was_file.txt/inner.txt").write_bytes(b"new inner\n")
    (data / "new.txt").write_bytes(b"new\n")
    (data / "sub/newdir").mkdir()
    (data / "sub/newdir/n.txt").write_bytes(b"november\n")
    (data / "escape").symlink_to(outside / "dir")
    (root / "srv/other/o.txt").write_bytes(b"changed outside the selection\n")


def make_outside(outside: Path) -> dict:
    """Files outside the target root that symlinks in the target point to."""
    (outside / "dir").mkdir(parents=True)
    (outside / "precious.txt").write_bytes(b"precious\n")
    (outside / "dir/f.txt").write_bytes(b"outside f\n")
    return outside_state(outside)


def outside_state(outside: Path) -> dict:
    state = {}
    for path in sorted(outside.rglob("*")):
        info = os.lstat(path)
        content = path.read_bytes() if path.is_file() else None
        state[str(path.relative_to(outside))] = (content, info.st_mtime_ns, info.st_ino)
    return state


@contextmanager
def held(path: Path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        yield fd
    finally:
        os.close(fd)


def names(report: dict, category: str) -> set[str]:
    return {item["path"] for item in report[category]["items"]}


def reasons(report: dict, category: str) -> dict[str, str]:
    return {item["path"]: item.get("reason", "") for item in report[category]["items"]}


def assert_same_reports(applied: dict, previewed: dict) -> None:
    for category in inplace.CATEGORIES:
        assert applied[category] == previewed[category], category
    assert applied == previewed


def assert_restored(root: Path, rel: str) -> None:
    """A file as the backup had it: bytes, mtime to the nanosecond, and a regular file."""
    content, mtime = FILES[rel]
    info = os.lstat(root / rel)
    assert stat.S_ISREG(info.st_mode), rel
    assert (root / rel).read_bytes() == content, rel
    assert info.st_mtime_ns == mtime, rel


def assert_metadata(root: Path) -> None:
    data = root / DATA
    secret = os.lstat(data / "secret.txt")
    assert stat.S_IMODE(secret.st_mode) == 0o640
    assert (secret.st_uid, secret.st_gid) == (1234, 1234)
    assert os.getxattr(data / "xattr.txt", "user.color") == b"blue"
    first, second = os.lstat(data / "links/h1"), os.lstat(data / "links/h2")
    assert first.st_ino == second.st_ino
    assert first.st_nlink == 2
    for rel in ("secret.txt", "xattr.txt", "links/h1", "gone/g1.txt", "gone/inner/g2.txt"):
        assert_restored(root, f"{DATA}/{rel}")


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """One repository with one archive of the tree, made once for the module."""
    base = tmp_path_factory.mktemp("inplace-borg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
    env.update(
        BORG_PASSPHRASE=PASSPHRASE,
        BORG_BASE_DIR=str(base / "borgbase"),
        TZ=TZ,
        LANG="C.UTF-8",
        LC_ALL="C.UTF-8",
    )
    archive = SimpleNamespace(env=env, location=f"{base / 'repo'}::a1")
    borg(archive, "init", "-e", "repokey-blake2", base / "repo")
    source = base / "source"
    source.mkdir()
    build_tree(source)
    borg(archive, "create", archive.location, "srv", cwd=source)
    return archive


@pytest.fixture
def scene(tmp_path):
    """A live tree changed since the backup, outside files its symlinks point to, and a place
    for the staging folder beside the target (same filesystem)."""
    live = tmp_path / "live"
    live.mkdir()
    build_tree(live)
    outside = tmp_path / "outside"
    before = make_outside(outside)
    change_tree(live, outside)
    return SimpleNamespace(live=live, outside=outside, outside_before=before, base=tmp_path)


def restore(archive, scene, policy, selected, root=None):
    """Preview, extract into a fresh staging folder, apply: both reports as dicts."""
    root = root or scene.live
    with held(root) as root_fd:
        previewed = inplace.preview(listing(archive, selected), root_fd, policy, selected)
    stage = scene.base / f"stage-{policy}"
    stage.mkdir(mode=0o700)
    extract(archive, stage, selected)
    with held(stage) as staged_fd, held(root) as root_fd:
        applied = inplace.apply(staged_fd, root_fd, policy, selected)
    shutil.rmtree(stage)
    return previewed.as_dict(), applied.as_dict()


# --- the tests -----------------------------------------------------------------------------------

ALWAYS_CREATED = {
    f"{DATA}/{rel}"
    for rel in (
        "c.txt",
        "sub/deep/e.txt",
        "gone",
        "gone/g1.txt",
        "gone/inner",
        "gone/inner/g2.txt",
        "links/h1",
        "links/h2",
        "xattr.txt",
        "secret.txt",
    )
}
EXISTING = {f"{DATA}/{r}" for r in ("a.txt", "b.txt", "sub/deep/d.txt", "link", "pipe")}
EXISTING |= {f"{DATA}/victim.txt", WEIRD_SHOWN}
LEFT_ALONE = {f"{DATA}/{r}" for r in ("new.txt", "sub/newdir", "sub/newdir/n.txt", "escape")}
IN_THE_WAY = f"a symbolic link is in the way at {DATA}/folder2"


def expected(policy: str) -> dict:
    if policy == "keep":
        replaced, kept = set(), EXISTING
    elif policy == "replace":
        replaced, kept = EXISTING | {f"{DATA}/folder2"}, set()
    else:
        changed = {f"{DATA}/b.txt", f"{DATA}/sub/deep/d.txt", f"{DATA}/victim.txt", WEIRD_SHOWN}
        replaced, kept = changed, EXISTING - changed
    blocked = {f"{DATA}/was_file.txt"}
    created = set(ALWAYS_CREATED)
    if policy == "replace":
        created.add(f"{DATA}/folder2/f.txt")
    else:
        blocked |= {f"{DATA}/folder2", f"{DATA}/folder2/f.txt"}
    return {
        "created": created,
        "replaced": replaced,
        "kept": kept,
        "left_alone": LEFT_ALONE,
        "blocked": blocked,
    }


@pytest.mark.parametrize("policy", inplace.POLICIES)
def test_each_policy_does_what_its_preview_said(archive, scene, policy):
    previewed, applied = restore(archive, scene, policy, [DATA])

    assert_same_reports(applied, previewed)
    for category, paths in expected(policy).items():
        assert names(applied, category) == paths, category
        assert applied[category]["count"] == len(paths), category
    blocked = reasons(applied, "blocked")
    assert blocked[f"{DATA}/was_file.txt"] == "a folder is in the way"
    if policy == "if-different":
        assert reasons(applied, "replaced") == {
            f"{DATA}/b.txt": "the modification time differs",
            f"{DATA}/sub/deep/d.txt": "the modification time differs",
            f"{DATA}/victim.txt": "the type differs",
            WEIRD_SHOWN: "the modification time differs",
        }
        assert set(reasons(applied, "kept").values()) == {"unchanged"}
    if policy != "replace":
        assert blocked[f"{DATA}/folder2/f.txt"] == IN_THE_WAY

    live, data = scene.live, scene.live / DATA
    # the outside is untouched, whatever the policy: never written through a symlink
    assert outside_state(scene.outside) == scene.outside_before
    assert_metadata(live)
    for rel in ALWAYS_CREATED & FILES.keys():
        assert_restored(live, rel)
    # left alone: still there, as they were
    assert (data / "new.txt").read_bytes() == b"new\n"
    assert (data / "sub/newdir/n.txt").read_bytes() == b"november\n"
    assert os.readlink(data / "escape") == str(scene.outside / "dir")
    assert (data / "was_file.txt/inner.txt").read_bytes() == b"new inner\n"
    assert (live / "srv/other/o.txt").read_bytes() == b"changed outside the selection\n"
    weird = os.fsencode(data) + b"/" + WEIRD
    with open(weird, "rb") as handle:
        weird_now = handle.read()

    if policy == "keep":
        assert (data / "b.txt").read_bytes() == b"bravo, changed\n"
        assert weird_now == b"changed\n"
    else:
        assert_restored(live, f"{DATA}/b.txt")
        assert_restored(live, f"{DATA}/sub/deep/d.txt")
        assert weird_now == WEIRD_CONTENT[0]
        assert os.lstat(weird).st_mtime_ns == WEIRD_CONTENT[1]
    if policy == "replace":
        assert_restored(live, f"{DATA}/victim.txt")  # the link itself was replaced
        assert_restored(live, f"{DATA}/folder2/f.txt")
        assert not (data / "folder2").is_symlink()
        assert stat.S_ISFIFO(os.lstat(data / "pipe").st_mode)
        assert os.readlink(data / "link") == "a.txt"
    else:
        assert os.readlink(data / "folder2") == str(scene.outside / "dir")
    if policy == "keep":
        assert os.readlink(data / "victim.txt") == str(scene.outside / "precious.txt")
    if policy == "if-different":
        assert_restored(live, f"{DATA}/victim.txt")
    assert_restored(live, f"{DATA}/a.txt")


def test_a_single_file(archive, scene):
    selected = [f"{DATA}/b.txt"]
    previewed, applied = restore(archive, scene, "replace", selected)
    assert_same_reports(applied, previewed)
    assert names(applied, "replaced") == {f"{DATA}/b.txt"}
    for category in ("created", "kept", "left_alone", "blocked"):
        assert applied[category]["count"] == 0, category
    assert_restored(scene.live, f"{DATA}/b.txt")
    assert (scene.live / DATA / "new.txt").exists()
    assert (scene.live / DATA / "sub/deep/d.txt").read_bytes() == b"DELTA!\n"


def test_a_target_without_the_selected_path(archive, scene):
    """Nothing of the selection exists there: all created, its parent folder too."""
    empty = scene.base / "elsewhere"
    empty.mkdir()
    previewed, applied = restore(archive, scene, "keep", [DATA], root=empty)
    assert_same_reports(applied, previewed)
    created = names(applied, "created")
    assert {"srv", DATA, WEIRD_SHOWN, f"{DATA}/pipe", f"{DATA}/folder2/f.txt"} <= created
    assert all(rel in created for rel in FILES if rel.startswith(DATA))
    assert applied["created"]["count"] == len(created)
    for category in ("replaced", "kept", "left_alone", "blocked"):
        assert applied[category]["count"] == 0, category
    for rel in FILES:
        if rel.startswith(DATA):
            assert_restored(empty, rel)
    assert_metadata(empty)
    assert os.readlink(empty / DATA / "link") == "a.txt"
    assert not (empty / "srv/other").exists()


def test_an_unchanged_tree_is_kept_whole(archive, tmp_path):
    """if-different on the tree as it was backed up: nothing is written. Covers the hardlink
    listed with size 0 (it takes its first name's size) and an mtime borg rounds up."""
    live = tmp_path / "live"
    live.mkdir()
    build_tree(live)
    scene = SimpleNamespace(live=live, base=tmp_path)
    previewed, applied = restore(archive, scene, "if-different", [DATA])
    assert_same_reports(applied, previewed)
    assert set(reasons(applied, "kept").values()) == {"unchanged"}
    assert {f"{DATA}/a.txt", f"{DATA}/links/h1", f"{DATA}/links/h2"} <= names(applied, "kept")
    for category in ("created", "replaced", "left_alone", "blocked"):
        assert applied[category]["count"] == 0, category


@pytest.mark.parametrize("policy", inplace.POLICIES)
def test_a_file_where_the_archive_has_a_folder(archive, tmp_path, policy):
    """A file in the way of a folder is replaced only under replace; a folder never is."""
    live = tmp_path / "live"
    live.mkdir()
    build_tree(live)
    shutil.rmtree(live / DATA / "gone")
    (live / DATA / "gone").write_bytes(b"a file now\n")
    scene = SimpleNamespace(live=live, base=tmp_path)
    previewed, applied = restore(archive, scene, policy, [f"{DATA}/gone"])
    assert_same_reports(applied, previewed)
    inner = {f"{DATA}/gone/g1.txt", f"{DATA}/gone/inner", f"{DATA}/gone/inner/g2.txt"}
    if policy == "replace":
        assert reasons(applied, "replaced") == {f"{DATA}/gone": "a file was in the way"}
        assert names(applied, "created") == inner
        assert_restored(live, f"{DATA}/gone/inner/g2.txt")
    else:
        reason = f"a file is in the way at {DATA}/gone"
        assert reasons(applied, "blocked") == dict.fromkeys(inner | {f"{DATA}/gone"}, reason)
        assert (live / DATA / "gone").read_bytes() == b"a file now\n"


def test_a_hardlink_alone_compares_without_its_size(archive, tmp_path):
    """The second name of a hardlink selected alone: borg lists size 0 and not its first name,
    so the size is unknown and the mtime decides."""
    live = tmp_path / "live"
    live.mkdir()
    build_tree(live)
    entries = listing(archive, [f"{DATA}/links"])
    second = next(e for e in entries if e.hardlink)
    assert second.size == 0
    alone = [second]
    with held(live) as root_fd:
        report = inplace.preview(alone, root_fd, "if-different", [second.path]).as_dict()
    assert reasons(report, "kept") == {second.path: "unchanged"}
    with held(live) as root_fd:
        both = inplace.preview(entries, root_fd, "if-different", [second.path]).as_dict()
    assert reasons(both, "kept") == {second.path: "unchanged"}


def test_a_failure_midway_reports_what_was_written(archive, scene, monkeypatch):
    stage = scene.base / "stage"
    stage.mkdir(mode=0o700)
    extract(archive, stage, [DATA])
    real_rename = os.rename
    calls = []

    def rename(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_rename(*args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with held(stage) as staged_fd, held(scene.live) as root_fd:
        with pytest.raises(inplace.ApplyFailed) as failed:
            inplace.apply(staged_fd, root_fd, "replace", [DATA])
    monkeypatch.undo()
    report = failed.value.report.as_dict()
    assert failed.value.code == "in_place_failed"
    assert failed.value.result == report
    assert "No space left on device" in str(failed.value)
    written = [item["path"] for c in ("created", "replaced") for item in report[c]["items"]]
    assert len(written) == 2
    assert report["created"]["count"] + report["replaced"]["count"] == 2
    for path in written:
        if path in FILES:
            assert_restored(scene.live, path)
    assert outside_state(scene.outside) == scene.outside_before


def test_a_move_to_another_filesystem_is_blocked(archive, scene, monkeypatch):
    stage = scene.base / "stage"
    stage.mkdir(mode=0o700)
    extract(archive, stage, [DATA])
    real_rename = os.rename

    def rename(src, dst, **kwargs):
        if src == b"b.txt":
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with held(stage) as staged_fd, held(scene.live) as root_fd:
        report = inplace.apply(staged_fd, root_fd, "replace", [DATA]).as_dict()
    monkeypatch.undo()
    assert reasons(report, "blocked")[f"{DATA}/b.txt"] == "on another filesystem"
    assert f"{DATA}/b.txt" not in names(report, "replaced")
    assert_restored(scene.live, f"{DATA}/a.txt")
    assert (scene.live / DATA / "b.txt").read_bytes() == b"bravo, changed\n"


def test_borg_times_are_read_exactly():
    berlin = ZoneInfo(TZ)
    assert inplace.listing_us("2023-11-14T23:13:21.000000", berlin) == 1_700_000_001_000_000
    assert inplace.borg_us(ROUNDED) == 1_700_000_001_000_000
    assert inplace.borg_us(T0) == 1_600_000_000_123_457  # rounded, as borg lists it
    item = {
        "type": "-",
        "mode": "hrw-r--r--",
        "path": "srv/x",
        "linktarget": "srv/y",
        "size": 0,
        "mtime": "2026-07-01T12:00:00.000001",
    }
    entry = inplace.entry_from_listing(item, berlin)
    assert entry.hardlink and entry.linktarget == "srv/y"
    assert entry.mtime_us == 1_782_900_000_000_001


@pytest.mark.parametrize("bad", [[], [""], ["/"], ["srv/../etc"], ["srv//x"], ["./srv"]])
def test_bad_selections_are_refused(bad, tmp_path):
    with held(tmp_path) as root_fd, pytest.raises(inplace.InvalidInput):
        inplace.preview([], root_fd, "keep", bad)


def test_an_unknown_policy_is_refused(tmp_path):
    with held(tmp_path) as root_fd, pytest.raises(inplace.InvalidInput):
        inplace.preview([], root_fd, "overwrite", [DATA])
