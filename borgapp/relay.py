"""The meeting point of a download that runs on a host and the client that waits for it.

The client's request (in one web process) listens on a Unix socket named after the job, in a
folder of the data directory only this account can enter; the agent's upload of borg's tar
(maybe in another web process of the same server) connects to it and writes what arrives.
Back-pressure runs the whole way: a slow client fills the socket, the upload's reads wait,
TCP tells the agent, the agent's pipe fills, borg waits.
"""

import os
import select
import socket
import threading
from pathlib import Path

from django.conf import settings

POLL = 0.5  # seconds between looks at whether the client is still there


def _folder() -> Path:
    folder = Path(settings.DATA_DIR) / "relay"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def _path(job_id: int) -> Path:
    return _folder() / f"job-{int(job_id)}.sock"


def listen(job_id: int) -> socket.socket:
    """The client's side: a socket the job's upload will connect to."""
    path = _path(job_id)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    return listener


def close(listener: socket.socket, job_id: int) -> None:
    listener.close()
    _path(job_id).unlink(missing_ok=True)


def accept(listener: socket.socket, timeout: float, stop: threading.Event):
    """The upload's connection, or None when `timeout` passes or `stop` is set first."""
    waited = 0.0
    while waited < timeout and not stop.is_set():
        ready, _, _ = select.select([listener], [], [], POLL)
        if ready:
            conn, _ = listener.accept()
            return conn
        waited += POLL
    return None


def connect(job_id: int) -> socket.socket | None:
    """The upload's side: the waiting client's socket, or None when nobody waits."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(_path(job_id)))
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    return conn
