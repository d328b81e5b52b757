"""Which process is which: a job records the process running it, so that a crash can be
told apart from a job that is still working (REL-14), even when pids are reused or the web,
worker and CLI live in different containers of one host."""

import os
import signal
import socket
import time


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "pid:[?]"


# Processes can only judge each other's pids inside one host and one pid namespace.
HOST = f"{socket.gethostname()}/{_pid_namespace()}"


def start_ticks(pid: int | None) -> int | None:
    """The process's start time in clock ticks since boot (stable for its whole life)."""
    if not pid:
        return None
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has finished
        return None
    return int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    """True while the process that had this pid (and start time) runs."""
    ticks = start_ticks(pid)
    if ticks is None:
        return False
    return started is None or ticks == started


def is_borg(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"borg" in handle.read()
    except OSError:
        return False


def stop_orphan(pid: int | None, started: int | None) -> None:
    """A borg whose job process died still holds the repository lock: stop its process
    group (SIGTERM leaves no lock behind; SIGKILL only if it will not go)."""
    if not alive(pid, started) or not is_borg(pid):
        return
    for signo in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, signo)
        except (ProcessLookupError, PermissionError):
            return
        for _ in range(50):
            if not alive(pid, started):
                return
            time.sleep(0.1)
