"""Where every file of the agent lives (CONTRACT.md section 4).

`--home DIR` (or `HOLDFAST_HOME`) puts everything under DIR; otherwise the system folders
of the OS. platformdirs is for the tray's per-user files, not these.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "HOLDFAST_HOME"


@dataclass(frozen=True)
class AgentPaths:
    conf: Path
    state: Path
    log: Path
    run: Path

    @classmethod
    def under(cls, home: Path) -> AgentPaths:
        home = home.expanduser().absolute()
        return cls(conf=home / "conf", state=home / "state", log=home / "log", run=home / "run")

    @classmethod
    def system(cls) -> AgentPaths:
        if sys.platform == "darwin":
            base = Path("/Library/Application Support/Holdfast")
            return cls(base / "conf", base / "state", Path("/Library/Logs/Holdfast"), base / "run")
        if sys.platform == "win32":
            base = Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "Holdfast"
            return cls(base / "conf", base / "state", base / "log", base / "run")
        return cls(
            Path("/etc/holdfast"),
            Path("/var/lib/holdfast"),
            Path("/var/log/holdfast"),
            Path("/run/holdfast"),
        )

    @classmethod
    def resolve(cls, home: str | None) -> AgentPaths:
        chosen = home or os.environ.get(ENV_HOME)
        return cls.under(Path(chosen)) if chosen else cls.system()

    @property
    def deploy_properties(self) -> Path:
        return self.conf / "deploy.properties"

    @property
    def agent_yaml(self) -> Path:
        return self.conf / "agent.yaml"

    @property
    def state_file(self) -> Path:
        return self.state / "state.json"

    @property
    def identity(self) -> Path:
        return self.state / "identity"

    @property
    def credential(self) -> Path:
        return self.state / "credential"

    @property
    def agent_log(self) -> Path:
        return self.log / "agent.log"

    @property
    def detection_log(self) -> Path:
        return self.log / "detection.log"

    @property
    def history_log(self) -> Path:
        return self.log / "history.log"

    @property
    def pid_file(self) -> Path:
        return self.run / "holdfast.pid"

    def ensure(self) -> None:
        """Create the folders; conf (it holds the token) is private to the service account.

        state/ is readable so that `holdfast status` works for every user; its one secret,
        the device credential, is a 0600 file.
        """
        for folder, mode in (
            (self.conf, 0o700),
            (self.state, 0o755),
            (self.log, 0o755),
            (self.run, 0o755),
        ):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(mode)


__all__ = ["ENV_HOME", "AgentPaths"]
