"""Remote repositories over ssh, against a loopback sshd started by the test (no network
beyond 127.0.0.1): the full cycle works, and an unknown host key fails fast (REL-05)."""

import json
import time

import pytest

from borgapp import borg, itemlist
from tests.helpers import PASSPHRASE, ROOT, cli, write_files


def rsh(sshd, known_hosts):
    return (
        f"ssh -oBatchMode=yes -oStrictHostKeyChecking=yes -oUserKnownHostsFile={known_hosts} "
        f"-i {sshd['home']}/client_key"
    )


@pytest.mark.django_db
def test_remote_repository_full_cycle(sshd, roots, settings, passfile, tmp_path):
    settings.BORG_RSH = rsh(sshd, sshd["home"] / "known_hosts")
    location = f"ssh://root@127.0.0.1:{sshd['port']}{sshd['home']}/repos/r1"
    result = cli("borg_init", "remote", "--location", location, "--passphrase-file", passfile)
    assert result.code == 0, result.err
    src = write_files(tmp_path / "src", {"a.txt": "over ssh"})
    result = cli("borg_backup", "remote", "--source", src, "--json")
    assert result.code == 0, result.err
    name = json.loads(result.out)["result"]["archive_name"]
    assert cli("borg_sync", "remote").code == 0
    target = roots.restore / "from-remote"
    assert cli("borg_extract", "remote", name, "--target", target).code == 0
    assert (target / str(src).lstrip("/") / "a.txt").read_text() == "over ssh"
    # the file index's lister reaches the repository through borg's own ssh and `borg serve`
    config = borg.BorgConfig(
        binary=settings.BORG_BINARY, base_dir=str(roots.borg_base), rsh=settings.BORG_RSH
    )
    listed = {}
    for fast in (True, False):
        out = tmp_path / f"listed-{fast}"
        with open(out, "wb") as handle:
            command = borg.index_list_cmd(location, name, handle.fileno(), fast=fast)
            assert bool(command.program) == fast
            borg.run(command, config, passphrase=PASSPHRASE)
        listed[fast] = out.read_bytes()
    fields = listed[True].split(b"\0")[:-1]  # borg's nine fields, and a content identity
    width = len(itemlist.CONTENT_FIELDS)
    borgs = [f for start in range(0, len(fields), width) for f in fields[start : start + width - 1]]
    assert b"\0".join([*borgs, b""]) == listed[False] and b"a.txt\0" in listed[False]
    assert len(fields[-1]) == 16 and int(fields[-1], 16) >= 0  # a.txt's identity, in hex
    # the forced command confines the key to its directory
    outside = f"ssh://root@127.0.0.1:{sshd['port']}{tmp_path}/elsewhere"
    with pytest.raises(borg.BorgError):
        borg.run(borg.init_cmd(outside, "none"), config, passphrase=PASSPHRASE)


def test_unknown_host_key_fails_fast(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = borg.BorgConfig(
        binary=str(ROOT / ".venv" / "bin" / "borg"),
        base_dir=str(tmp_path / "base"),
        rsh=rsh(sshd, empty),
    )
    started = time.monotonic()
    with pytest.raises(borg.ConnectionClosed):
        borg.run(
            borg.list_cmd(f"ssh://root@127.0.0.1:{sshd['port']}/x/repo"),
            config,
            passphrase=PASSPHRASE,
        )
    assert time.monotonic() - started < 5
