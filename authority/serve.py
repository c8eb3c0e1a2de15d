"""`holdfast-authority serve`: HTTPS only, on a socket we bind ourselves.

Binding before uvicorn starts lets a port in use become one clear sentence instead of a
traceback. A watcher reloads the certificate when `tls activate` replaces it, so the switch
needs no restart: new connections present the new certificate at once.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import socket
import ssl
import threading
from pathlib import Path

import uvicorn

from authority.app import Limits, create_app
from authority.datadir import DataDir
from authority.errors import InvalidInput, Unavailable
from authority.tls import CertificateStore

log = logging.getLogger("authority")
RELOAD_CHECK_SECONDS = 2.0


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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


def serve(data: DataDir, host: str, port: int, max_concurrency: int, retry_after: int) -> None:
    limits = Limits(max_concurrency, retry_after)
    data.require_initialised()
    setup_logging(data)
    store = CertificateStore(data)
    store.current()
    app = create_app(data, limits)
    sock = bind_socket(host, port)
    config = uvicorn.Config(
        app,
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
        "serving https://%s:%d, certificate sha1=%s max_concurrency=%d retry_after=%d",
        host,
        sock.getsockname()[1],
        fp.sha1,
        limits.max_concurrency,
        limits.retry_after,
    )
    try:
        server.run(sockets=[sock])
    finally:
        reloader.stopped.set()
        sock.close()
        app.state.db.close()


__all__ = ["bind_socket", "serve", "setup_logging"]
