#!/usr/bin/env python3
"""A stand-in for borg in bench/fleet.py's simulated agents: the agent's own code runs as with
real borg (argv, the passphrase pipe, --log-json, the report), only borg's work is skipped.
`--version` answers like borg 1.4.5; `create ... REPO::NAME PATH...` reads the passphrase
from BORG_PASSPHRASE_FD, emits one progress line and prints the JSON borg prints."""

import json
import os
import sys
import time
from datetime import datetime


def main() -> int:
    args = sys.argv[1:]
    if "--version" in args:
        print("borg 1.4.5")
        return 0
    if "create" not in args:
        print(f"stub borg: only create is simulated, not {args[:1]}", file=sys.stderr)
        return 2
    fd = os.environ.get("BORG_PASSPHRASE_FD")
    if fd:
        os.read(int(fd), 1024)  # as borg does: the pipe is read, never stored
    target = next(arg for arg in args if "::" in arg)
    location, name = target.split("::", 1)
    began = time.time()
    progress = {"type": "archive_progress", "original_size": 1000, "compressed_size": 900,
                "deduplicated_size": 900, "nfiles": 1, "path": "/srv/x", "time": began}  # fmt: skip
    print(json.dumps(progress), file=sys.stderr, flush=True)
    time.sleep(0.05)
    stamp = datetime.fromtimestamp(began).strftime("%Y-%m-%dT%H:%M:%S.%f")
    stats = {"original_size": 1000, "compressed_size": 900, "deduplicated_size": 900, "nfiles": 1}
    created = {
        "archive": {"name": name, "id": os.urandom(32).hex(), "start": stamp, "end": stamp,
                    "duration": 0.05, "stats": stats},
        "repository": {"id": "0" * 64, "location": location, "last_modified": stamp},
        "encryption": {"mode": "repokey-blake2"},
        "cache": {"stats": {"total_chunks": 1, "total_csize": 900, "total_size": 1000,
                            "total_unique_chunks": 1, "unique_csize": 900, "unique_size": 1000}},
    }  # fmt: skip
    print(json.dumps(created))
    return 0


if __name__ == "__main__":
    sys.exit(main())
