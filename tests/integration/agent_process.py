"""A real agent: `python -m agent run --home DIR` as its own process, observed from outside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FAST = {
    # Short intervals through agent.yaml: no test waits for a real 5-minute or 1-hour retry.
    "policy_retry_seconds": 1,
    "registration_retry_seconds": 1,
    "backup_interval_seconds": 2,
    "retry_jitter": 0.0,
    "request_timeout_seconds": 5,
}


@dataclass
class Agent:
    home: Path
    process: subprocess.Popen[bytes] | None = None

    def configure(self, **overrides: Any) -> None:
        (self.home / "conf").mkdir(parents=True, exist_ok=True)
        machine_id = self.home / "machine-id"
        if not machine_id.exists():
            machine_id.write_text(os.urandom(16).hex() + "\n")
        values = {**FAST, "machine_id_file": str(machine_id), **overrides}
        (self.home / "conf" / "agent.yaml").write_text(yaml.safe_dump(values))

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "agent", *args, "--home", str(self.home)]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one `holdfast` command against this agent's folders; its result."""
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, *args: str) -> None:
        with (self.home / "agent.out").open("ab") as out:
            self.process = subprocess.Popen(
                self.command("run", *args), stdout=out, stderr=subprocess.STDOUT
            )

    def status(self) -> dict[str, Any]:
        result = subprocess.run(
            self.command("status", "--json"), capture_output=True, text=True, check=True, timeout=60
        )
        body: dict[str, Any] = json.loads(result.stdout)
        return body

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30, what: str = ""
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status = self.status()
        while time.monotonic() < deadline:
            if predicate(status):
                return status
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.2)
            status = self.status()
        raise AssertionError(
            f"agent did not reach {what or 'the expected state'}: {status}\n--- agent.log ---\n"
            + self.log()
            + "\n--- agent.out ---\n"
            + self.output()
        )

    def wait_phase(self, phase: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait_for(
            lambda s: s["phase"] == phase and s["daemon_running"], timeout, f"phase {phase}"
        )

    def log(self) -> str:
        path = self.home / "log" / "agent.log"
        return path.read_text() if path.exists() else ""

    def output(self) -> str:
        path = self.home / "agent.out"
        return path.read_text() if path.exists() else ""

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None
