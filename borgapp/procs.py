"""Which process is which: a job records the process running it, so that a crash can be
told apart from a job that is still working (REL-14), even when pids are reused or the web,
worker and CLI live in different containers of one host."""

import logging
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


def _read_stat(pid: int) -> tuple[str, list[str]] | None:
    """A process's name and the fields after it in /proc/<pid>/stat (state first)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """A process and all processes below it (children, their children...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        stat = _read_stat(int(entry)) if entry.isdigit() else None
        if stat is not None:
            children.setdefault(int(stat[1][1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def start_ticks(pid: int | None) -> int | None:
    """The process's start time in clock ticks since boot (stable for its whole life)."""
    stat = _read_stat(pid) if pid else None
    if stat is None or stat[1][0] == "Z":  # gone, or a zombie: it has finished
        return None
    return int(stat[1][19])


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


# --- adopting orphans ----------------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(name, state, parent pid) of a process, from /proc."""
    stat = _read_stat(pid)
    return None if stat is None else (stat[0], stat[1][0], int(stat[1][1]))


def adopted_zombies() -> list[int]:
    """Finished processes this process adopted and has not reaped: children in state Z whose
    name differs from ours (the processes multiprocessing forks from us keep our name; an
    adopted borg or ssh was exec'd under its own)."""
    import multiprocessing.process

    me = os.getpid()
    own = _stat(me)
    forked = {child.pid for child in list(getattr(multiprocessing.process, "_children", ()))}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in forked:
            continue
        stat = _stat(int(entry))
        if stat and stat[2] == me and stat[1] == "Z" and own and stat[0] != own[0]:
            found.append(int(entry))
    return found


def reap_adopted() -> list[int]:
    reaped = []
    for pid in adopted_zombies():
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
        except ChildProcessError:
            pass
    return reaped


def become_subreaper(every: float = 1.0) -> bool:
    """Make this process (the worker's main process) adopt the orphans of its descendants and
    reap them. When a worker dies (OOM killer, kill -9), its borg is re-parented; if the new
    parent never reaps it (PID 1 in a container without an init), the dead borg stays a
    zombie, borg counts a zombie as alive, and the repository lock it left is never taken
    for stale: every later job on that repository would wait out its lock timeout."""
    import ctypes
    import threading

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False

    def reap_forever():
        while True:
            time.sleep(every)
            try:
                reap_adopted()
            except Exception:  # keep reaping whatever one pass ran into
                logging.getLogger(__name__).exception("Reaping adopted processes failed")

    threading.Thread(target=reap_forever, name="orphan-reaper", daemon=True).start()
    return True


def borg_serving(mountpoint: str) -> int | None:
    """The pid of the borg process serving a FUSE mount at `mountpoint` (`borg mount`
    daemonises, so the job that started it does not know it), or None."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                args = handle.read().split(b"\0")
        except OSError:
            continue
        if b"mount" in args and mountpoint.encode() in args and any(b"borg" in a for a in args):
            return int(entry)
    return None
