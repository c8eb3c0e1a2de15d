"""`holdfast-authority serve`: HTTPS only, on a socket we bind ourselves.

Binding before uvicorn starts lets a port in use become one clear sentence instead of a
traceback. A watcher reloads the certificate when `tls activate` replaces it, so the switch
needs no restart: new connections present the new certificate at once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import os
import signal
import socket
import ssl
import threading
import time
from pathlib import Path
from types import FrameType

import anyio.to_thread
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from authority.app import Limits, create_app
from authority.datadir import DataDir
from authority.db import Database, create_schema
from authority.errors import InvalidInput, Unavailable
from authority.tls import CertificateStore

log = logging.getLogger("authority")
RELOAD_CHECK_SECONDS = 2.0
# A worker that exits this soon after its start would only exit again: stop instead.
CRASH_LOOP_SECONDS = 5.0
# Request threads per serving process (`serve --threads`). Requests' code holds the GIL
# for most of its time, so more threads than this only take turns at it: with anyio's 40,
# a mass install cost the authority 22 ms of CPU a device; with 8, 14 ms, and answers came
# faster too (benchmarks/fleet_storm.py, docs/performance.md).
DEFAULT_THREADS = 8


class ThreadLimit:
    """The application, with at most `threads` requests' code running at once in threads.

    The limit belongs to the event loop (anyio keeps one per loop), so it is set from
    inside it, on the first event uvicorn delivers (the lifespan startup).
    """

    def __init__(self, app: ASGIApp, threads: int) -> None:
        self.app = app
        self.threads = threads
        self.applied = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.applied:
            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
            self.applied = True
        await self.app(scope, receive, send)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on connections of a
    # socket that says it is TCP. Without it every answer written in two pieces (headers,
    # then body) waited for the client's delayed ACK: 40 ms a request on Linux.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Unavailable(
                f"port {port} on {host} is already in use (another authority, or another "
                "program): stop it or choose --port",
                code="port_in_use",
            ) from None
        if exc.errno == errno.EACCES:
            raise Unavailable(
                f"not permitted to listen on {host}:{port}", code="port_denied"
            ) from None
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def setup_logging(data: DataDir) -> None:
    data.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    fmt = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"
    )
    main = logging.handlers.RotatingFileHandler(
        data.logs / "authority.log", maxBytes=10 * 1024 * 1024, backupCount=5
    )
    main.setFormatter(fmt)
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    root = logging.getLogger("authority")
    root.setLevel(logging.INFO)
    root.handlers[:] = [main, console]
    root.propagate = False

    access = logging.handlers.RotatingFileHandler(
        data.logs / "access.log", maxBytes=10 * 1024 * 1024, backupCount=5
    )
    access.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    access_logger = logging.getLogger("authority.access")
    access_logger.handlers[:] = [access]
    access_logger.propagate = False
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = [main, console]
        logging.getLogger(name).propagate = False


class CertificateReloader(threading.Thread):
    """Loads the current certificate into the live TLS context when its file changes."""

    def __init__(self, server: uvicorn.Server, store: CertificateStore) -> None:
        super().__init__(name="cert-reloader", daemon=True)
        self.server = server
        self.store = store
        self.stopped = threading.Event()
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int]:
        cert: Path = self.store.cert_path("current")
        key: Path = self.store.key_path("current")
        return (cert.stat().st_mtime_ns, key.stat().st_mtime_ns)

    def run(self) -> None:
        while not self.stopped.wait(RELOAD_CHECK_SECONDS):
            try:
                stamp = self._stamp()
                context = getattr(self.server.config, "ssl", None)  # set once started
                if stamp == self._seen or not isinstance(context, ssl.SSLContext):
                    continue
                context.load_cert_chain(
                    str(self.store.cert_path("current")), str(self.store.key_path("current"))
                )
                self._seen = stamp
                fp = self.store.current()
                log.info("TLS certificate reloaded: sha1=%s sha256=%s", fp.sha1, fp.sha256)
            except (OSError, ssl.SSLError) as exc:
                # Mid-swap (key and certificate not yet a pair): the next check gets it.
                log.warning("TLS certificate reload deferred: %s", exc)


def serve(
    data: DataDir,
    host: str,
    port: int,
    max_concurrency: int,
    retry_after: int,
    *,
    workers: int = 1,
    threads: int = DEFAULT_THREADS,
) -> None:
    limits = Limits(max_concurrency, retry_after)
    data.require_initialised()
    if workers > 1 and not hasattr(os, "fork"):
        raise InvalidInput("--workers above 1 needs a system with fork (Linux, macOS)")
    setup_logging(data)
    CertificateStore(data).current()
    if workers == 1:
        app = create_app(data, limits)
        sock = bind_socket(host, port)
        try:
            _serve_process(app, data, sock, host, limits, threads=threads)
        finally:
            sock.close()
        return
    # The schema once, before any fork: workers creating missing tables at once would race.
    db = Database(data.database_url)
    try:
        create_schema(db.engine)
    finally:
        db.close()
    sock = bind_socket(host, port)
    try:
        Workers(data, sock, host, worker_limits(limits, workers), workers, threads=threads).run()
    finally:
        sock.close()


def _serve_process(
    app: FastAPI, data: DataDir, sock: socket.socket, host: str, limits: Limits, *, threads: int
) -> None:
    """One serving process: uvicorn with `app` on `sock`, and its certificate watcher."""
    store = CertificateStore(data)
    config = uvicorn.Config(
        ThreadLimit(app, threads),
        ssl_certfile=str(store.cert_path("current")),
        ssl_keyfile=str(store.key_path("current")),
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    reloader = CertificateReloader(server, store)
    reloader.start()
    fp = store.current()
    log.info(
        "serving https://%s:%d, certificate sha1=%s max_concurrency=%d retry_after=%d threads=%d",
        host,
        sock.getsockname()[1],
        fp.sha1,
        limits.max_concurrency,
        limits.retry_after,
        threads,
    )
    try:
        server.run(sockets=[sock])
    finally:
        reloader.stopped.set()
        app.state.db.close()


def worker_limits(limits: Limits, workers: int) -> Limits:
    """Each worker's share of --max-concurrency, so the server's total stays within it."""
    return Limits(max(1, limits.max_concurrency // workers), limits.retry_after)


class Workers:
    """`serve --workers N`: N serving processes forked over one listening socket.

    Python runs one request's code at a time per process, so one process uses one core;
    a mass install needs more. Each worker has its own app, database connections (SQLite in
    WAL mode takes writers from several processes), certificate watcher and share of the
    in-flight limit. The parent only starts them, replaces one that dies, and passes a
    stop on: SIGTERM or SIGINT stops every worker gracefully, as one process would stop.
    """

    def __init__(
        self,
        data: DataDir,
        sock: socket.socket,
        host: str,
        limits: Limits,
        count: int,
        *,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        self.data = data
        self.threads = threads
        self.sock = sock
        self.host = host
        self.limits = limits
        self.count = count
        self.children: dict[int, int] = {}  # pid -> worker number
        self.started: dict[int, float] = {}  # worker number -> when
        self.stopping = False
        self.failed = False

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        log.info("starting %d workers on port %d", self.count, self.sock.getsockname()[1])
        for first in range(self.count):
            self._start(first)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in self.children:
                continue
            number = self.children.pop(pid)
            if self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if time.monotonic() - self.started[number] < CRASH_LOOP_SECONDS:
                log.error("worker %d exited (%d) as it started; stopping the server", number, code)
                self.failed = True
                self._stop_all()
                continue
            log.error("worker %d (pid %d) exited (%d); starting another", number, pid, code)
            self._start(number)
        if self.failed:
            raise Unavailable("a server worker could not start; see authority.log")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_all()

    def _stop_all(self) -> None:
        # SIGTERM, whatever arrived: a worker already told by the terminal's SIGINT takes a
        # second SIGINT as "stop now", a second SIGTERM as the same graceful stop.
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _start(self, number: int) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = number
            self.started[number] = time.monotonic()
            return
        code = 0
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            setup_logging(self.data)
            log.info("worker %d started (pid %d)", number, os.getpid())
            app = create_app(self.data, self.limits)
            _serve_process(app, self.data, self.sock, self.host, self.limits, threads=self.threads)
        except BaseException:
            log.exception("worker %d failed", number)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)


__all__ = [
    "DEFAULT_THREADS",
    "ThreadLimit",
    "Workers",
    "bind_socket",
    "serve",
    "setup_logging",
    "worker_limits",
]
