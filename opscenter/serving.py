"""The web server's worker: gunicorn's arbiter keeps the processes, hypercorn's asyncio HTTP
server reads the requests, and Django (WSGI, sync views) runs in a fixed pool of threads.

Why not gunicorn's own workers (issue 10, finding 5; gunicorn 27.0.1): the sync worker reads a
request's headers in a blocking call with the worker timeout as its only limit, so each slow
client holds a whole process. The gthread worker waits up to 5 s for a connection's first byte
inside a pool thread (workers/gthread.py, `wait_for_data`), and once a byte has arrived it
parses the headers with blocking reads that have no deadline at all (`handle` ->
`next(conn.parser)`): a client that sends a byte a second holds a thread for ever, and
gunicorn has no header timeout setting. Its ASGI worker parses in the event loop but arms no
timer before a connection's first request (asgi/protocol.py arms the keep-alive timer only
after a response).

hypercorn 0.18 starts a connection's idle timer when the connection opens and stops it only
when h11 has the complete request head (asyncio/tcp_server.py, protocol/h11.py), and starts it
again after each response: `keep_alive_timeout` bounds the headers of the first request, the
headers of every later one and the idle time between them, however slowly the bytes come.
Slow clients cost a coroutine, never a thread: `Bounded` below reads the whole body in the
event loop (bounded in time too) before the request takes one of the `threads`.
"""

import asyncio
import io
import os
import re
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from gunicorn.workers.base import Worker
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.logging import Logger

MAX_BODY = 16 * 1024 * 1024  # bytes; the API takes small JSON bodies
# Seconds a client may take nothing of an answer (a stalled download) before it counts as gone.
SEND_TIMEOUT = float(os.environ.get("WEB_SEND_TIMEOUT", "60"))


class AccessLog(Logger):
    """hypercorn's logger with the two gunicorn atoms this project's format uses: %(h)s is the
    client's address alone, %(M)s the request's time in milliseconds."""

    def atoms(self, request, response, request_time):
        atoms = super().atoms(request, response, request_time)
        client = request.get("client")
        atoms["h"] = client[0] if client else "-"
        atoms["M"] = str(int(request_time * 1000))
        return atoms


def _empty_response(status, close=True):
    headers = [(b"content-length", b"0")] + ([(b"connection", b"close")] if close else [])
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": b"", "more_body": False},
    )


def wsgi_environ(scope, body: bytes) -> dict:
    """PEP 3333's environ for an ASGI HTTP scope (strings of bytes are latin-1 strings)."""
    server = scope.get("server") or ("localhost", 80)
    root = scope.get("root_path", "")
    path = scope["path"][len(root) :] if scope["path"].startswith(root) else scope["path"]
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root.encode("utf-8").decode("latin-1"),
        "PATH_INFO": (path or "/").encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]) if server[1] is not None else "",
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = scope["client"][0], str(scope["client"][1])
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = f"HTTP_{name}"
        value = raw_value.decode("latin-1")
        if name in environ:  # a repeated header: one value (cookies have their own separator)
            value = environ[name] + ("; " if name == "HTTP_COOKIE" else ",") + value
        environ[name] = value
    return environ


class Upload:
    """A request's body read as it arrives, from a pool thread: each read waits in the event
    loop for the next chunk, at most `timeout` seconds. A client that leaves or stalls makes
    the read fail (OSError), never look like the body's end."""

    def __init__(self, receive, loop, timeout: float):
        self.receive, self.loop, self.timeout = receive, loop, timeout
        self.buffer = b""
        self.done = False

    def _next(self) -> None:
        waiting = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(self.receive(), self.timeout), self.loop
        )
        try:
            message = waiting.result()
        except TimeoutError:
            raise OSError(f"the upload stalled for {self.timeout:.0f} s") from None
        if message["type"] == "http.disconnect":
            raise OSError("the client closed the connection before the end of its upload")
        self.buffer += message.get("body", b"")
        self.done = not message.get("more_body")

    def read(self, size: int = -1) -> bytes:
        while not self.done and (size < 0 or not self.buffer):
            self._next()
        if size < 0:
            size = len(self.buffer)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def readline(self, size: int = -1) -> bytes:  # Django's request wraps what it is given
        while not self.done and b"\n" not in self.buffer and (size < 0 or len(self.buffer) < size):
            self._next()
        end = self.buffer.find(b"\n") + 1 or len(self.buffer)
        return self.read(end if size < 0 else min(end, size))


class Bounded:
    """An ASGI app around a WSGI app. A request's body is read in the event loop within
    `body_timeout` seconds (408 otherwise), then the WSGI app runs in a pool of `threads`
    threads that live as long as the process (so Django keeps its database connections, as
    under gthread). Requests beyond `threads` wait in the event loop, holding no thread."""

    def __init__(self, wsgi_app, threads, body_timeout, max_body=MAX_BODY, ready=None,
                 interval=0.5, streamed=""):  # fmt: skip
        self.app = wsgi_app
        self.streamed = re.compile(streamed) if streamed else None
        self.threads = threads
        self.body_timeout = body_timeout
        self.max_body = max_body
        self.pool = None
        self.parking = Parking(ready, interval, lambda: self.pool) if ready else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:  # websocket: nothing here speaks it
            await send({"type": "websocket.close"})

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="web")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.pool is not None:
                    self.pool.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope, receive, send):
        if self.streamed and self.streamed.match(scope["path"]) and scope["method"] == "POST":
            await self._streamed(scope, receive, send)
            return
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        for event in _empty_response(413):
                            await send(event)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            for event in _empty_response(408):
                await send(event)
            return
        body = b"".join(chunks)
        # Set when the client closes its connection: a streamed answer (a download) stops
        # instead of reading on for nobody (hypercorn drops what is sent after a close).
        gone = threading.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        loop = asyncio.get_running_loop()
        deadline = None
        try:
            while True:
                environ = wsgi_environ(scope, body)
                environ["opscenter.client_gone"] = gone
                # the app may answer "nothing yet" and wait here (below)
                environ["opscenter.park"] = self.parking is not None
                # Without a started response hypercorn answers 500 when this returns or raises.
                parked = await loop.run_in_executor(self.pool, self._run, environ, loop, send)
                if parked is None:
                    return
                key, seconds = parked
                deadline = deadline or loop.time() + seconds
                if gone.is_set() or loop.time() >= deadline:
                    break
                # Nothing for this client yet: it waits here, holding no thread, until the
                # app's `ready` check says its key has something, or its time is up; then
                # the same request runs again.
                await self.parking.wait(key, deadline, watcher)
                if gone.is_set() or loop.time() >= deadline:
                    break
            for event in _empty_response(204, close=False):
                await send(event)
        finally:
            watcher.cancel()

    async def _streamed(self, scope, receive, send):
        """A request whose body the app reads as it arrives (an agent's upload of a download,
        relayed to the client as it comes): no size limit, and each read waits at most
        SEND_TIMEOUT seconds for the next bytes."""
        loop = asyncio.get_running_loop()
        environ = wsgi_environ(scope, b"")
        environ["wsgi.input"] = Upload(receive, loop, SEND_TIMEOUT)
        environ["opscenter.client_gone"] = threading.Event()
        environ["opscenter.park"] = False
        await loop.run_in_executor(self.pool, self._run, environ, loop, send)

    def _run(self, environ, loop, send):
        """In a pool thread: run the WSGI app and hand its answer to the event loop, one chunk
        at a time (a chunk waits until the loop has written the one before)."""
        response = {}

        def emit(*messages):  # in one turn of the loop: nothing is read between them
            async def in_order():
                for message in messages:
                    await send(message)

            sending = asyncio.run_coroutine_threadsafe(in_order(), loop)
            try:
                sending.result(timeout=SEND_TIMEOUT)
            except TimeoutError:
                # The client takes nothing for this long: it is treated as gone, so that a
                # stalled download holds neither this thread nor its repository's lease.
                sending.cancel()
                environ["opscenter.client_gone"].set()

        def start_response(status, headers, exc_info=None):
            if exc_info and response.get("sent"):
                raise exc_info[1].with_traceback(exc_info[2])
            park = _park_of(headers)
            if park is not None:
                response["park"] = park
                return write
            response["start"] = {
                "type": "http.response.start",
                "status": int(status.split(" ", 1)[0]),
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
            return write

        def write(data, more_body=True):
            body = {"type": "http.response.body", "body": bytes(data), "more_body": more_body}
            if response.get("sent"):
                emit(body)
                return
            if "start" not in response:
                raise RuntimeError("the WSGI app sent a body before start_response()")
            response["sent"] = True
            emit(response["start"], body)

        result = self.app(environ, start_response)
        if "park" in response:  # nothing is sent: the request waits in the event loop
            if hasattr(result, "close"):
                result.close()
            return response["park"]
        try:
            # One chunk held back, so that the last one also ends the response (and a
            # one-chunk answer goes out with its head): hypercorn reads the socket between
            # two messages, and a client that already has its answer may close it there,
            # which hypercorn logs as a second, aborted request.
            held = None
            gone = environ["opscenter.client_gone"]
            for chunk in result:
                if gone.is_set():
                    return  # nobody to send to; `close` below stops the producer
                if chunk:
                    if held is not None:
                        write(held)
                    held = chunk
        finally:
            if hasattr(result, "close"):
                result.close()
        write(held or b"", more_body=False)


PARK_HEADER = "x-opscenter-park"  # "<key> <seconds>": the app's "nothing yet, let me wait"
MAX_PARK = 300.0  # seconds a request may wait in the event loop, whatever the app asks


def _park_of(headers) -> tuple[str, float] | None:
    for name, value in headers:
        if name.lower() == PARK_HEADER:
            key, _, seconds = value.partition(" ")
            try:
                return key, min(max(float(seconds), 0.0), MAX_PARK)
            except ValueError:
                return None
    return None


class Parking:
    """Requests waiting in the event loop for something to happen to their key (an agent's
    long poll waits for its host's next job). While any wait, one check every `interval`
    seconds asks the app which of their keys are ready (`ready(keys) -> keys`, one database
    query, in a pool thread); those requests run again. A hundred waiting agents cost one
    query per interval and no thread."""

    def __init__(self, ready, interval: float, pool_of):
        self.ready, self.interval, self.pool_of = ready, interval, pool_of
        self.waiting: dict[str, set[asyncio.Future]] = {}
        self.checker: asyncio.Task | None = None

    async def wait(self, key: str, deadline: float, also: asyncio.Task) -> None:
        """Until the key is ready, the deadline passes or `also` (the client leaving) ends."""
        loop = asyncio.get_running_loop()
        woken = loop.create_future()
        self.waiting.setdefault(key, set()).add(woken)
        if self.checker is None or self.checker.done():
            self.checker = asyncio.create_task(self._check())
        try:
            await asyncio.wait({woken, also}, timeout=max(deadline - loop.time(), 0),
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            futures = self.waiting.get(key, set())
            futures.discard(woken)
            if not futures:
                self.waiting.pop(key, None)

    async def _check(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting:
            await asyncio.sleep(self.interval)
            keys = set(self.waiting)
            try:
                ready = await loop.run_in_executor(self.pool_of(), self.ready, keys)
            except Exception as exc:  # the database is away: the waits end at their deadline
                print(f"parking check failed: {exc!r}", file=sys.stderr)
                continue
            for key in set(ready) & keys:
                for woken in self.waiting.get(key, ()):
                    if not woken.done():
                        woken.set_result(None)


async def _watch_disconnect(receive, gone: threading.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


def _app_settings():
    """The app's `ready` check for waiting requests and its interval, and the paths whose
    bodies are read as they arrive, when the app served is this project (Django is set up by
    then); none for any other WSGI app."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    if not settings.configured or not getattr(settings, "PARKING_READY", ""):
        return None, 0.5, ""
    ready = import_string(settings.PARKING_READY)
    return ready, settings.PARKING_INTERVAL, settings.STREAMED_UPLOADS


class HypercornWorker(Worker):
    """A gunicorn worker (heartbeat, signals, logs as usual) that serves its listeners with
    hypercorn. gunicorn settings it reads: threads (the pool per process), keepalive (the
    client timeout: request head, request body, idle connection), graceful_timeout, accesslog
    and access_log_format, errorlog."""

    loop = None

    def init_process(self):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        super().init_process()  # signals, the app, then run()

    def init_signals(self):
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        self.loop.add_signal_handler(signal.SIGTERM, self._graceful_stop)
        self.loop.add_signal_handler(signal.SIGINT, self._quick_stop)
        self.loop.add_signal_handler(signal.SIGQUIT, self._quick_stop)
        self.loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        self.loop.add_signal_handler(signal.SIGWINCH, lambda: None)
        # the arbiter's SIGABRT means the loop stopped ticking: a plain handler still runs
        signal.signal(signal.SIGABRT, self.handle_abort)

    def _graceful_stop(self):
        self.alive = False

    def _quick_stop(self):
        self.alive = False
        self.cfg.worker_int(self)
        sys.exit(0)

    def hypercorn_config(self) -> Config:
        config = Config()
        # hypercorn serves gunicorn's listening sockets through duplicates of their descriptors
        config.bind = [f"fd://{os.dup(listener.fileno())}" for listener in self.sockets]
        config.keep_alive_timeout = self.cfg.keepalive
        config.graceful_timeout = self.cfg.graceful_timeout
        config.include_server_header = False
        config.logger_class = AccessLog
        config.accesslog = self.log.access_log if self.cfg.accesslog else None
        config.access_log_format = self.cfg.access_log_format
        config.errorlog = self.log.error_log
        return config

    async def _until_stopped(self):
        """The heartbeat the arbiter watches; returning starts hypercorn's graceful stop."""
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                return
            await asyncio.sleep(1.0)

    def run(self):
        if self.cfg.is_ssl:
            self.log.error("TLS belongs to the reverse proxy in front; remove certfile/keyfile")
            sys.exit(3)  # gunicorn's WORKER_BOOT_ERROR: the arbiter stops
        ready, interval, streamed = _app_settings()
        app = Bounded(self.wsgi, threads=self.cfg.threads, body_timeout=self.cfg.keepalive,
                      ready=ready, interval=interval, streamed=streamed)  # fmt: skip
        try:
            self.loop.run_until_complete(
                serve(
                    app, self.hypercorn_config(), shutdown_trigger=self._until_stopped, mode="asgi"
                )
            )
        finally:
            self.loop.close()
