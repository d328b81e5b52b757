"""Record real borg output for the parsing tests: `python record_borg_output.py BORG OUTDIR`.

Each case is saved as OUTDIR/<case>.json with rc, stdout and stderr, exactly as borg printed
them with --log-json. Run against borg 1.2.x and 1.4.x; the tests replay both.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PASS = "recorded-passphrase"


def main(binary: str, outdir: str) -> None:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    env = {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "BORG_BASE_DIR": str(work / "base"),
        "BORG_EXIT_CODES": "modern",
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no",
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
        "BORG_DISPLAY_PASSPHRASE": "no",
    }
    src = work / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_text("hello\n" * 100)
    (src / "b.bin").write_bytes(os.urandom(10000))
    repo = str(work / "repo")

    def run(case, args, passphrase=PASS):
        r, w = os.pipe()
        os.write(w, passphrase.encode())
        os.close(w)
        proc = subprocess.run(
            [binary, *args],
            env={**env, "BORG_PASSPHRASE_FD": str(r)},
            pass_fds=(r,),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        os.close(r)
        if case:
            record = {
                "args": args,
                "rc": proc.returncode,
                "stdout": proc.stdout,
                "stderr": proc.stderr,
            }
            text = json.dumps(record, indent=1).replace(str(work), "/WORK")
            (out / f"{case}.json").write_text(text)
        return proc

    run("init", ["init", "--log-json", "--encryption=repokey-blake2", "--", repo])
    run("create", ["create", "--log-json", "--json", "--", f"{repo}::arch-1", str(src)])
    run("create_exists", ["create", "--log-json", "--json", "--", f"{repo}::arch-1", str(src)])
    run(None, ["create", "--log-json", "--", f"{repo}::other-1", str(src)])
    run(
        "list",
        [
            "list",
            "--log-json",
            "--json",
            "--consider-checkpoints",
            "--format={name}{id}{start}{end}{hostname}{username}{comment}",
            "--",
            repo,
        ],
    )
    run("info", ["info", "--log-json", "--json", "--", repo])
    run("wrong_passphrase", ["list", "--log-json", "--json", "--", repo], passphrase="wrong")
    run("missing_repo", ["list", "--log-json", "--json", "--", str(work / "nope")])
    run("missing_archive", ["extract", "--log-json", "--", f"{repo}::nope"])
    run(
        "prune_dry_run",
        [
            "prune",
            "--log-json",
            "--list",
            "--dry-run",
            "--keep-last=1",
            "--glob-archives=arch-*",
            "--",
            repo,
        ],
    )
    run(
        "warning_missing_source",
        ["create", "--log-json", "--", f"{repo}::warn-1", str(src), str(work / "missing")],
    )
    # a lock held by a live process on this host
    holder = subprocess.Popen(["sleep", "30"])
    lock = Path(repo) / "lock.exclusive"
    lock.mkdir()
    import socket
    import uuid

    hostid = f"{socket.getfqdn()}@{uuid.getnode()}"
    (lock / f"{hostid}.{holder.pid}-0").write_text("")
    (Path(repo) / "lock.roster").write_text(json.dumps({"exclusive": [[hostid, holder.pid, 0]]}))
    run("lock_timeout", ["list", "--log-json", "--lock-wait=1", "--", repo])
    holder.kill()
    for p in lock.iterdir():
        p.unlink()
    lock.rmdir()
    (Path(repo) / "lock.roster").unlink()
    segments = sorted((Path(repo) / "data").glob("*/*"), key=lambda p: p.stat().st_size)
    blob = bytearray(segments[-1].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    segments[-1].write_bytes(bytes(blob))
    run("check_corrupt", ["check", "--log-json", "--repository-only", "--", repo])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
