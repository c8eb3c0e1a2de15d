"""The Holdfast side of the benchmark: a real authority and a real agent, started once.

As an administrator deploys them (the same commands as `make demo`): `holdfast-authority
init`, `org create`, `policy create` with a detection script that reports the benchmark's
home, `policy set exclude=` (nothing excluded, as restic backs up everything), `serve`
over HTTPS; then `holdfast run --deploy-args ...`, which registers and runs its first
backup at once. Later backups run only on `holdfast backup-now`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.pinning import pinned_context

WEEK = 7 * 86400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _admin(data: Path, *args: str) -> str:
    command = [sys.executable, "-m", "authority", *args, "--data", str(data)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"holdfast-authority {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Holdfast:
    """The authority's data folder and the agent's home, under one work folder."""

    root: Path
    home: Path
    authority: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    install: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.root / "authority"

    @property
    def agent_home(self) -> Path:
        return self.root / "agent"

    @property
    def store(self) -> Path:
        return self.data / "store"

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "agent", *args, "--home", str(self.agent_home)]

    def start_authority(self) -> None:
        port = _free_port()
        _admin(self.data, "init", "--host", "127.0.0.1", "--port", str(port))
        script = self.root / "detect.sh"
        script.write_text(
            f"#!/bin/sh\necho AGENT_USERNAME=bench@example.com\necho AGENT_USER_HOME={self.home}\n"
        )
        script.chmod(0o755)
        _admin(self.data, "org", "create", "Bench", "--auth", "local")
        _admin(self.data, "policy", "create", "--org", "Bench", "--script", f"linux={script}")
        _admin(
            self.data,
            "policy",
            "set",
            "--org",
            "Bench",
            "exclude=",
            f"backup_interval_seconds={WEEK}",
        )
        view = json.loads(_admin(self.data, "policy", "show", "--org", "Bench", "--json"))
        self.install = view["install_args"]
        with (self.root / "authority.out").open("ab") as out:
            self.authority = subprocess.Popen(
                [
                    *(sys.executable, "-m", "authority", "serve", "--data", str(self.data)),
                    *("--host", "127.0.0.1", "--port", str(port)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        context = pinned_context([view["tls_pins"][0]["sha1"]])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.authority.poll() is not None:
                raise RuntimeError("the authority exited during start-up; see authority.out")
            try:
                httpx.get(f"{view['deployment_url']}/api/v1/health", verify=context, timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the authority did not answer within 60 s")

    def start_agent(self, settings: Mapping[str, Any] | None = None) -> None:
        """Start the agent (`settings`: more agent.yaml keys) and wait for a first backup."""
        conf = self.agent_home / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        machine_id = self.agent_home / "machine-id"
        if not machine_id.exists():  # a restart keeps the device's hardware binding
            machine_id.write_text(os.urandom(16).hex() + "\n")
        settings = {
            "backup_interval_seconds": WEEK,
            "machine_id_file": str(machine_id),
            **(settings or {}),
        }
        (conf / "agent.yaml").write_text(yaml.safe_dump(settings))
        with (self.root / "agent.out").open("ab") as out:
            self.agent = subprocess.Popen(
                self.command("run", "--deploy-args", self.install["cp_args"]),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise RuntimeError("the agent exited during start-up; see agent.out")
            status = subprocess.run(
                self.command("status", "--json"), capture_output=True, text=True, check=False
            )
            if status.returncode == 0 and json.loads(status.stdout).get("last_backup"):
                return
            time.sleep(0.3)
        raise RuntimeError("the agent did not commit its first backup within 120 s")

    def stop(self) -> None:
        _stop(self.agent)
        _stop(self.authority)


__all__ = ["Holdfast"]
