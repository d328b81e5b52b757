"""Restores give the bytes back: a varied tree comes back byte for byte with its modes,
mtimes, symlinks, empty folders and sparse holes."""

import hashlib
import json
import os
import stat

import pytest

from tests.helpers import cli

pytestmark = pytest.mark.django_db

SPARSE_SIZE = 64 * 1024 * 1024


def build_tree(root):
    files = {
        "plain.txt": b"hello world\n",
        "nested/deeper/still/data.bin": os.urandom(300_000),
        "ünïcødé/日本語.txt": "こんにちは\n".encode(),
        "spaces in name/file with spaces.txt": b"s p a c e s",
        "-dash-leading": b"not an option",
        "exec.sh": b"#!/bin/sh\necho hi\n",
        "secret.key": b"private",
    }
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "empty-folder").mkdir()
    (root / "link-to-plain").symlink_to("plain.txt")
    (root / "dangling-link").symlink_to("does/not/exist")
    with open(root / "sparse.img", "wb") as handle:
        handle.seek(SPARSE_SIZE // 2)
        handle.write(b"middle")
        handle.seek(SPARSE_SIZE - 5)
        handle.write(b"tail!")
    os.chmod(root / "exec.sh", 0o755)
    os.chmod(root / "secret.key", 0o600)
    os.chmod(root / "nested", 0o750)
    for index, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        if not path.is_symlink():
            stamp = 1_600_000_000 + index * 3600
            os.utime(path, (stamp, stamp))


def snapshot(root):
    """Everything a restore must keep, per relative path."""
    result = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        info = os.lstat(path)
        entry = {"mode": stat.filemode(info.st_mode)}
        if path.is_symlink():
            entry["target"] = os.readlink(path)
        else:
            entry["mtime"] = int(info.st_mtime)
            if path.is_file():
                entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        result[rel] = entry
    return result


def test_restore_is_byte_for_byte(repo, roots, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    before = snapshot(src)
    result = cli("borg_backup", "main", "--source", src, "--json")
    assert result.code == 0, result.err
    name = json.loads(result.out)["result"]["archive_name"]

    target = roots.restore / "restored"
    result = cli("borg_extract", "main", name, "--target", target)
    assert result.code == 0, result.err
    restored_root = target / str(src).lstrip("/")
    after = snapshot(restored_root)
    assert after == before
    sparse = os.stat(restored_root / "sparse.img")
    assert sparse.st_size == SPARSE_SIZE
    # holes stay holes (borg writes whole chunks, up to 8 MiB, around the data it holds)
    assert sparse.st_blocks * 512 <= SPARSE_SIZE // 4
