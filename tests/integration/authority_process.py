"""A real authority: initialised by its CLI, served by `holdfast-authority serve` over TLS."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.pinning import fingerprints_of, pinned_context
from authority import cli

STARTUP_SECONDS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def admin(data: Path, *args: str, check: bool = True) -> Outcome:
    """`holdfast-authority ARGS --data DATA`, through the CLI's own entry point.

    In-process to keep the suite fast; tests/integration/test_admin_cli.py runs the
    installed command itself.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*args, "--data", str(data)])
    if check and code != 0:
        raise AssertionError(f"{args} exited {code}: {err.getvalue()}")
    return Outcome(code, out.getvalue(), err.getvalue())


def admin_json(data: Path, *args: str) -> Any:
    return json.loads(admin(data, *args, "--json").stdout)


@dataclass
class Authority:
    data: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def pins(self) -> list[str]:
        """SHA-1 of the current (and staged) certificate, as `SSL_WHITELIST` carries them."""
        return [
            fingerprints_of(ssl.PEM_cert_to_DER_cert(path.read_text()))[0]
            for path in (self.data / "tls" / "current.crt", self.data / "tls" / "next.crt")
            if path.exists()
        ]

    def client(self, pins: list[str] | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=pinned_context(pins or self.pins()), timeout=10
        )

    def start(self) -> None:
        with (self.data / "serve.out").open("ab") as log:
            self.process = self._spawn(log)
        deadline = time.monotonic() + STARTUP_SECONDS
        pins = self.pins()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited: {(self.data / 'serve.out').read_text()}")
            try:
                with self.client(pins) as c:
                    if c.get("/api/v1/health").status_code == 200:
                        return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the authority did not start in time")

    def _spawn(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "authority",
                "serve",
                "--data",
                str(self.data),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def initialise(data: Path, port: int) -> None:
    admin(data, "init", "--host", "127.0.0.1", "--port", str(port))
