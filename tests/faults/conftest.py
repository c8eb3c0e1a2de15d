"""The fault suite's fixtures: a seed, an authority with a home to back up, and the tally
of faults injected and survived that the end of the run prints."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults.workload import make_home
from tests.integration.authority_process import Authority, admin, admin_json, free_port, initialise

ORG = "Faults"


@dataclass
class FaultRound:
    """The faults of one scenario: they count as survived once it passes its checks."""

    injected: int = 0

    def inject(self, count: int = 1) -> None:
        self.injected += count


@dataclass
class FaultTally:
    injected: int = 0
    survived: int = 0
    notes: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def round(self) -> Iterator[FaultRound]:
        """A scenario's faults: all injected ones are counted; survived ones only if the
        block ends without an exception (a failed check)."""
        current = FaultRound()
        try:
            yield current
        finally:
            self.injected += current.injected
        self.survived += current.injected


TALLY = pytest.StashKey[FaultTally]()


@pytest.fixture(scope="session")
def faults(request: pytest.FixtureRequest) -> FaultTally:
    return request.config.stash.setdefault(TALLY, FaultTally())


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    tally = config.stash.get(TALLY, None)
    if tally is None:
        return
    terminalreporter.write_line(
        f"faults injected: {tally.injected}, survived: {tally.survived}", bold=True
    )
    for note in tally.notes:
        terminalreporter.write_line(note)


@pytest.fixture(scope="session")
def seed(faults: FaultTally) -> int:
    """The suite's random seed: HOLDFAST_FAULT_SEED replays a run."""
    value = int(os.environ.get("HOLDFAST_FAULT_SEED") or secrets.randbelow(2**32))
    faults.notes.append(f"fault seed: {value} (HOLDFAST_FAULT_SEED={value} replays it)")
    print(f"fault seed: {value}")
    return value


def serve_authority(folder: Path, home: Path) -> Authority:
    """A running authority in `folder` whose organization's detection script names `home`."""
    data = folder / "authority"
    port = free_port()
    initialise(data, port)
    script = folder / "detect.sh"
    script.write_text(f"echo AGENT_USERNAME=ann@example.com\necho AGENT_USER_HOME={home}\n")
    folder.chmod(0o755)  # detection runs as an unprivileged account
    admin(data, "org", "create", ORG, "--auth", "local")
    admin(data, "policy", "create", "--org", ORG, "--script", f"linux={script}")
    server = Authority(data=data, port=port)
    server.start()
    return server


def cp_args(authority: Authority, *, url: str | None = None) -> str:
    """The `CP_ARGS` string the authority hands out, optionally with another DEPLOYMENT_URL
    (a proxy's); the pins stay the authority's."""
    shown = admin_json(authority.data, "policy", "show", "--org", ORG)
    pairs = dict(piece.split("=", 1) for piece in shown["install_args"]["cp_args"].split("&"))
    if url is not None:
        pairs["DEPLOYMENT_URL"] = url
    return "&".join(f"{key}={value}" for key, value in pairs.items())


@pytest.fixture
def home(tmp_path: Path, seed: int) -> Path:
    return make_home(tmp_path / "users" / "ann", random.Random(seed))


@pytest.fixture
def authority(tmp_path: Path, home: Path) -> Iterator[Authority]:
    server = serve_authority(tmp_path, home)
    try:
        yield server
    finally:
        server.stop()
