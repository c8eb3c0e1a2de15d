"""The authority's data folder: where each file lives, and the server's own settings.

    DATA/authority.json    versioned settings: public host and port (they make DEPLOYMENT_URL)
    DATA/authority.db      SQLite database (WAL, so admin commands run beside `serve`)
    DATA/admin.key         admin API key, mode 0600
    DATA/tls/              current.crt/.key, staged next.crt/.key, retired previous.crt/.key
    DATA/log/              authority.log, access.log

The folder itself is mode 0700: it holds policy tokens and private keys.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authority.errors import InvalidInput, NotInitialised

CONFIG_VERSION = 1
DEFAULT_PORT = 4285
ENV_DATA = "HOLDFAST_AUTHORITY_DATA"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `path` so that a reader sees the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class ServerConfig:
    """The public address agents use, chosen at `init`."""

    host: str
    port: int

    @property
    def deployment_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


@dataclass(frozen=True)
class DataDir:
    """Paths inside one authority data folder."""

    root: Path

    @classmethod
    def resolve(cls, given: str | None) -> DataDir:
        """The folder from `--data`, else from the environment; naming both is not needed."""
        value = given or os.environ.get(ENV_DATA)
        if not value:
            raise InvalidInput(f"no data folder: pass --data DIR or set {ENV_DATA}")
        return cls(Path(value).expanduser().absolute())

    @property
    def config_file(self) -> Path:
        return self.root / "authority.json"

    @property
    def database(self) -> Path:
        return self.root / "authority.db"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.database}"

    @property
    def admin_key(self) -> Path:
        return self.root / "admin.key"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    def is_initialised(self) -> bool:
        return self.config_file.is_file() and self.database.is_file()

    def require_initialised(self) -> None:
        if not self.is_initialised():
            raise NotInitialised(
                f"data folder {self.root} is not initialised: "
                f"run `holdfast-authority init --data {self.root}` first"
            )

    def read_config(self) -> ServerConfig:
        self.require_initialised()
        try:
            raw: dict[str, Any] = json.loads(self.config_file.read_text("utf-8"))
            if raw.get("version") != CONFIG_VERSION:
                raise InvalidInput(
                    f"{self.config_file} has version {raw.get('version')!r}; "
                    f"this authority reads version {CONFIG_VERSION}"
                )
            return ServerConfig(host=str(raw["host"]), port=int(raw["port"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{self.config_file} is damaged: {exc}") from exc

    def write_config(self, config: ServerConfig) -> None:
        body = {"version": CONFIG_VERSION, "host": config.host, "port": config.port}
        write_atomic(self.config_file, (json.dumps(body, indent=2) + "\n").encode())


__all__ = ["DEFAULT_PORT", "ENV_DATA", "DataDir", "ServerConfig", "write_atomic"]
