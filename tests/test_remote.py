"""Remote repositories over ssh, against a loopback sshd started by the test (no network
beyond 127.0.0.1): the full cycle works, and an unknown host key fails fast (REL-05)."""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from borgapp import borg
from tests.helpers import PASSPHRASE, ROOT, cli, write_files

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not os.path.exists(SSHD) or os.getuid() != 0:
        pytest.skip("needs openssh-server and root (make test installs it)")
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", home / name], check=True
        )
    borg_bin = ROOT / ".venv" / "bin" / "borg"
    client_pub = (home / "client_key.pub").read_text().strip()
    (home / "authorized_keys").write_text(
        f'command="{borg_bin} serve --restrict-to-path {home}/repos",restrict {client_pub}\n'
    )
    (home / "repos").mkdir()
    port = free_port()
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home}/host_key\n"
        f"PidFile {home}/sshd.pid\nAuthorizedKeysFile {home}/authorized_keys\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\n"
        "ClientAliveInterval 2\nClientAliveCountMax 3\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    host_pub = (home / "host_key.pub").read_text().split()
    (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    yield {"port": port, "home": home}
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(home, ignore_errors=True)


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
    # the forced command confines the key to its directory
    outside = f"ssh://root@127.0.0.1:{sshd['port']}{tmp_path}/elsewhere"
    config = borg.BorgConfig(
        binary=settings.BORG_BINARY, base_dir=str(roots.borg_base), rsh=settings.BORG_RSH
    )
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
