"""The served app (gunicorn with opscenter/gunicorn.conf.py, as `make run` and the image serve
it) against slow clients (issue 10, finding 5): connections that send their request a byte at
a time, or nothing at all, hold no worker and are closed by the server in its own time.

Everything here talks to the test's own server on 127.0.0.1, a bounded number of bytes over a
bounded time."""

import os
import runpy
import selectors
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from tests.helpers import ROOT, stop_process

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SLOW_CLIENTS = 40
SLOW_BODY = (
    b"POST /api/v1/repositories/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
)
CONFIG = str(ROOT / "opscenter" / "gunicorn.conf.py")
PARTIAL = b"GET /api/v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def configured_client_timeout() -> float:
    """The served config's limit for a client's headers and for an idle connection (seconds);
    gunicorn's own default where the config sets none."""
    return float(runpy.run_path(CONFIG).get("keepalive", 2))


class Dribbler:
    """Slow clients in one thread: each connection sends the start of a request and then one
    more header byte per `interval`, never finishing it, until the server closes it or the
    time is up. Records when the server closed each connection."""

    def __init__(self, address, count, interval, lasts, opening=PARTIAL, sends=True):
        self.interval, self.lasts, self.sends = interval, lasts, sends
        self.socks = []
        for _ in range(count):
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(opening)
            sock.setblocking(False)
            self.socks.append(sock)
        self.opened = time.monotonic()
        self.closed_after = {}  # index -> seconds from opening until the server closed it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self.socks:
            sock.close()

    def _closed_by_server(self, sock) -> bool:
        try:
            while True:
                data = sock.recv(4096)
                if not data:
                    return True  # EOF (after any answer the server chose to send)
        except BlockingIOError:
            return False
        except OSError:
            return True  # reset

    def _run(self):
        deadline = self.opened + self.lasts
        while not self._stop.is_set() and time.monotonic() < deadline:
            for index, sock in enumerate(self.socks):
                if index in self.closed_after:
                    continue
                if self._closed_by_server(sock):
                    self.closed_after[index] = time.monotonic() - self.opened
                    continue
                if not self.sends:
                    continue
                try:
                    sock.send(b"x")
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed_after[index] = time.monotonic() - self.opened
            if len(self.closed_after) == len(self.socks):
                return
            self._stop.wait(self.interval)


def timed_get(url, timeout):
    """Seconds a plain GET took to be answered (any status), or None when it was not."""
    started = time.monotonic()
    try:
        urllib.request.urlopen(url, timeout=timeout).read()
    except urllib.error.HTTPError as exc:
        exc.read()
    except OSError:
        return None
    return time.monotonic() - started


def address(url):
    parts = urlsplit(url)
    return parts.hostname, parts.port


def test_slow_clients_do_not_stop_a_normal_request(web_server):
    url, log = web_server
    limit = configured_client_timeout()
    with Dribbler(address(url), SLOW_CLIENTS, interval=1.0, lasts=limit + 15) as slow:
        time.sleep(3)  # every slow client has sent bytes a few times by now
        took = timed_get(f"{url}/api/v1/", timeout=10)
        assert took is not None and took < 3, (
            f"a normal request behind {SLOW_CLIENTS} slow clients took {took} s (None: no answer)"
        )
        # ...and the server drops the slow clients themselves once their time is up
        while len(slow.closed_after) < SLOW_CLIENTS and slow._thread.is_alive():
            time.sleep(0.5)
        assert len(slow.closed_after) == SLOW_CLIENTS, "the server left slow clients open"
        assert max(slow.closed_after.values()) < limit + 3
    assert timed_get(f"{url}/api/v1/", timeout=10) is not None
    assert "X-Slow" not in log.read_text()


def test_half_sent_silent_and_idle_connections_are_closed_in_time(web_server):
    url, _ = web_server
    limit = configured_client_timeout()
    host, port = address(url)

    # a kept-alive connection after one answered request
    kept = socket.create_connection((host, port), timeout=10)
    kept.sendall(b"GET /api/v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += kept.recv(4096)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += kept.recv(4096)
    answered = time.monotonic()

    with (
        Dribbler((host, port), 1, interval=0.5, lasts=limit + 10) as half_sent,
        Dribbler(
            (host, port), 1, interval=0.5, lasts=limit + 10, opening=b"", sends=False
        ) as silent,
        Dribbler((host, port), 1, interval=0.5, lasts=limit + 10, opening=SLOW_BODY) as slow_body,
    ):
        kept.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(kept, selectors.EVENT_READ)
        kept_closed = None
        while time.monotonic() < answered + limit + 10:
            if kept_closed is None and sel.select(timeout=0.2):
                try:
                    if not kept.recv(4096):
                        kept_closed = time.monotonic() - answered
                except OSError:
                    kept_closed = time.monotonic() - answered
            if kept_closed is not None and all(
                d.closed_after for d in (half_sent, silent, slow_body)
            ):
                break
            time.sleep(0.2)
        sel.close()
        kept.close()
    assert kept_closed is not None and kept_closed < limit + 3, kept_closed
    assert half_sent.closed_after and half_sent.closed_after[0] < limit + 3, half_sent.closed_after
    assert silent.closed_after and silent.closed_after[0] < limit + 3, silent.closed_after
    assert slow_body.closed_after and slow_body.closed_after[0] < limit + 3, slow_body.closed_after


SLEEPY_APP = """
import time


def application(environ, start_response):
    time.sleep(1)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""


def test_one_process_runs_its_threads_at_once_and_no_more(tmp_path):
    """WEB_THREADS requests of one process run at the same time (the guide's waiting routes
    leave room for others); the next ones wait for a free thread."""
    (tmp_path / "sleepy.py").write_text(SLEEPY_APP)
    threads = int(runpy.run_path(CONFIG)["threads"])
    assert threads >= 16
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_WORKERS": "1",
    }
    log = tmp_path / "sleepy.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "gunicorn"), "sleepy", "--config", CONFIG],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while timed_get(url, timeout=5) is None:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)

        def wave(count):
            started = time.monotonic()
            with ThreadPoolExecutor(count) as pool:
                answers = list(pool.map(lambda _: timed_get(url, timeout=20), range(count)))
            assert None not in answers
            return time.monotonic() - started

        assert wave(threads) < 1.8  # all at once: one second
        assert wave(threads + 1) >= 1.9  # one more waits for a thread: two seconds
    finally:
        stop_process(proc)
