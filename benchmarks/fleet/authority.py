"""A real authority for the fleet, set up with its own commands as an administrator would:
`init`, a local-authentication organization (no directory to ask), a silent policy, and
`serve` over HTTPS with SQLite. Only the public commands are used, so the benchmark runs
from an installed `holdfast` as well as from the source tree.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent.deploy_args import parse_cp_args
from agent.errors import ContactError
from agent.transport import AuthorityClient
from authority import cli
from benchmarks.processes import Watched

STARTUP_SECONDS = 60.0
# What the policy delivers to every agent; the simulated devices do not run it.
DETECTION_SCRIPT = (
    "#!/bin/sh\necho AGENT_USERNAME=nobody@fleet.example.com\necho AGENT_USER_HOME=/\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def admin(data: Path, *args: str) -> str:
    """`holdfast-authority ARGS --data DATA`, through the command's own entry point (in this
    process: a dozen interpreter start-ups were most of a small run); its output, or
    RuntimeError with what it said on stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*args, "--data", str(data)])
    if code != 0:
        raise RuntimeError(f"holdfast-authority {' '.join(args)}: {err.getvalue().strip()}")
    return out.getvalue()


@dataclass
class FleetAuthority:
    """One authority's data folder and, once started, its `serve` process."""

    data: Path
    port: int
    org: str = "Fleet"
    serve_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    install: dict[str, Any] = field(default_factory=dict)
    watched: Watched | None = None

    def create(self) -> None:
        """`init`, the organization and its silent policy; the installer arguments kept."""
        self.data.parent.mkdir(parents=True, exist_ok=True)
        admin(self.data, "init", "--host", "127.0.0.1", "--port", str(self.port))
        script = self.data.parent / f"{self.data.name}-detect.sh"
        script.write_text(DETECTION_SCRIPT)
        admin(self.data, "org", "create", self.org, "--auth", "local")
        admin(self.data, "policy", "create", "--org", self.org, "--script", f"linux={script}")
        view = json.loads(admin(self.data, "policy", "show", "--org", self.org, "--json"))
        self.install = view["install_args"]

    @property
    def cp_args(self) -> str:
        return str(self.install["cp_args"])

    def client(self) -> AuthorityClient:
        args = parse_cp_args(self.cp_args)
        return AuthorityClient(args.deployment_url, pins=args.ssl_whitelist, timeout=5)

    def start(self) -> None:
        """`serve`, and wait until it answers its health check over the pinned TLS."""
        log = (self.data.parent / f"{self.data.name}-serve.out").open("ab")
        with log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "authority", "serve", "--data", str(self.data)),
                    *("--host", "127.0.0.1", "--port", str(self.port), *self.serve_args),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the authority exited during start-up; see {log.name}")
                try:
                    client.health()
                except ContactError:
                    time.sleep(0.1)
                    continue
                self.watched = Watched(self.process.pid)
                return
        raise RuntimeError(f"the authority did not answer within {STARTUP_SECONDS:.0f} s")

    def cpu_seconds(self) -> float:
        return self.watched.cpu() if self.watched else 0.0

    def peak_rss(self) -> int:
        """The serving processes' peak resident memory, bytes, over their whole life: with
        `--workers`, the sum of each process's peak (an upper bound: pages they share
        count once per process)."""
        if self.process is None:
            return 0
        total = 0
        root = psutil.Process(self.process.pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        return total

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def devices(self) -> list[dict[str, Any]]:
        """`device list --json` of the organization."""
        found: list[dict[str, Any]] = json.loads(
            admin(self.data, "device", "list", "--json", "--org", self.org)
        )
        return found

    def users(self) -> list[dict[str, Any]]:
        """`user list --json` of the organization."""
        found: list[dict[str, Any]] = json.loads(
            admin(self.data, "user", "list", "--json", "--org", self.org)
        )
        return found


__all__ = ["FleetAuthority", "admin", "free_port"]
