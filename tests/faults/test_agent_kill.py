"""`kill -9` of the agent at random moments of its lifecycle and of its backups.

Each iteration installs a new device (its own agent folder and machine identity) against
one authority, kills the daemon after a delay drawn from the seed (and, now and then, kills
the restarted daemon too), starts it again, and then checks what a user would notice: the
state files are whole, the authority has exactly one device for it, the next backup
completes, and a restore gives the home back byte for byte.

CI=true runs 50 iterations, otherwise 8; HOLDFAST_SOAK_ITERATIONS asks for any number
(`make soak`), and HOLDFAST_FAULT_SEED replays a run.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.lifecycle import Step
from agent.paths import AgentPaths
from agent.status import collect
from tests.conftest import IN_CI
from tests.faults.conftest import FaultRound, FaultTally, cp_args, serve_authority
from tests.faults.invariants import (
    assert_restores_exactly,
    assert_state_files_parse,
    device_guid,
    devices_of,
    read_state,
    wait_started,
    wait_state,
)
from tests.faults.workload import make_home
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin_json

ITERATIONS = int(os.environ.get("HOLDFAST_SOAK_ITERATIONS") or (50 if IN_CI else 8))
SECOND_KILL_CHANCE = 0.35
POLL_SECONDS = 0.01


@dataclass(frozen=True)
class Aim:
    """A stretch of the agent's life a kill lands in: from the moment `reached` first
    holds, a random delay of up to `spread` seconds. Waiting for the moment first keeps
    each stretch covered when a busy machine slows the agent down."""

    name: str
    reached: Callable[[Agent], bool]
    spread: float


def _started(agent: Agent) -> bool:
    return "STARTED holdfast" in agent.log()


def _backing(agent: Agent) -> bool:
    state = read_state(agent)
    return state.step == Step.BACKING or state.last_backup is not None


def _backed_up(agent: Agent) -> bool:
    return read_state(agent).last_backup is not None


# The spreads are a little longer than each stretch takes on an idle machine.
AIMS = (
    # From the process's start: saving the installer arguments, the re-exec, the policy.
    Aim("installation", lambda _agent: True, 0.5),
    # From the daemon's start: policy, detection, registration, the first check-in.
    Aim("lifecycle", _started, 0.3),
    # The first backup: every file is new, packs are being uploaded.
    Aim("first backup", _backing, 0.4),
    # After it (backup_interval_seconds 1): idle, check-ins, the next backups.
    Aim("later backups", _backed_up, 1.5),
)
# A second kill, of the restarted daemon: during its start or the backup it resumes.
RESTART = Aim("restart", lambda _agent: True, 0.8)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, seed: int) -> Iterator[tuple[Authority, Path]]:
    """One authority and one home for every iteration: each iteration is a new device."""
    folder = tmp_path_factory.mktemp("kill9")
    home = make_home(folder / "users" / "ann", random.Random(seed))
    server = serve_authority(folder, home)
    try:
        yield server, home
    finally:
        server.stop()
        # Every iteration's device stored the whole home: pytest keeps the last runs' folders.
        shutil.rmtree(server.data / "store", ignore_errors=True)


def landing(agent: Agent) -> str:
    """Where the killed daemon was (its persisted phase and the step of its attempt),
    once its files are checked as whole, and its status as showing no backup running."""
    state = assert_state_files_parse(agent.home)
    assert collect(AgentPaths.under(agent.home))["backup_running"] is None
    if not (agent.home / "state" / "state.json").exists():
        return "starting"
    return f"{state.phase.value}:{state.step.value}"


def start(agent: Agent, args: str) -> int:
    """Start the daemon as a service manager would; the installer again if its arguments
    were never saved (a kill before `run --deploy-args` wrote them). The STARTED count to
    wait for."""
    starts = agent.log().count("STARTED holdfast") + 1
    if (agent.home / "conf" / "deploy.properties").exists():
        agent.start()
    else:
        agent.start("--deploy-args", args)
    return starts


def test_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing(
    bench: tuple[Authority, Path], seed: int, faults: FaultTally, tmp_path: Path
) -> None:
    authority, home = bench
    rng = random.Random(f"kill-9 {seed}")
    args = cp_args(authority)
    landed: Counter[str] = Counter()
    for iteration in range(ITERATIONS):
        agent = Agent(home=tmp_path / f"agent-{iteration}")
        agent.configure(backup_interval_seconds=1)
        aims = [rng.choice(AIMS)] + ([RESTART] if rng.random() < SECOND_KILL_CHANCE else [])
        kills = [(aim, rng.uniform(0, aim.spread)) for aim in aims]
        where: list[str] = []
        try:
            with faults.round() as faults_round:
                kill_and_restart(agent, args, kills, faults_round, where)
                landed.update(where)
                check_outcome(authority, agent, home, iteration, tmp_path / "restored")
        except Exception as exc:
            exc.add_note(
                f"iteration {iteration} of seed {seed}: kills "
                + ", ".join(f"{aim.name} + {delay:.3f} s" for aim, delay in kills)
                + f" landed at {where}"
            )
            raise
        finally:
            agent.stop()
    faults.notes.append(
        f"kill -9 iterations: {ITERATIONS}; kills landed at: "
        + ", ".join(f"{point} {count}" for point, count in sorted(landed.items()))
    )


def kill_and_restart(
    agent: Agent,
    args: str,
    kills: list[tuple[Aim, float]],
    faults: FaultRound,
    where: list[str],
) -> None:
    """Install the new device; for each kill, wait for its aim, then its delay, kill the
    daemon and start it again. `where` gets where each kill landed."""
    starts = 0
    agent.start("--deploy-args", args)
    for aim, delay in kills:
        assert agent.process is not None
        deadline = time.monotonic() + 60
        while not aim.reached(agent):
            assert agent.process.poll() is None, f"the agent exited:\n{agent.output()}"
            assert time.monotonic() < deadline, f"the agent never reached {aim.name}"
            time.sleep(POLL_SECONDS)
        with contextlib.suppress(subprocess.TimeoutExpired):  # still running: the normal case
            code = agent.process.wait(timeout=delay)
            raise AssertionError(f"the agent exited {code} before the kill:\n{agent.output()}")
        agent.kill9()
        faults.inject()
        where.append(landing(agent))
        starts = start(agent, args)
    wait_started(agent, starts)


def check_outcome(
    authority: Authority, agent: Agent, home: Path, iteration: int, target: Path
) -> None:
    wait_state(agent, lambda s: s.phase.value == "backing_up", "backing_up")
    backup = agent.cli("backup-now")
    assert backup.returncode == 0, backup.stdout + backup.stderr + "\n" + agent.log()
    guid = device_guid(agent)
    assert len(devices_of(authority, guid)) == 1
    # One device per iteration so far: no kill made a second identity register.
    assert len(admin_json(authority.data, "device", "list")) == iteration + 1
    shutil.rmtree(target, ignore_errors=True)
    assert_restores_exactly(agent, home, target)
    shutil.rmtree(target)
    assert_state_files_parse(agent.home)


def test_a_daemon_killed_mid_backup_leaves_no_backup_running_in_status(
    authority: Authority, home: Path, faults: FaultTally, tmp_path: Path
) -> None:
    agent = Agent(home=tmp_path / "agent")
    agent.configure(backup_interval_seconds=3600)
    progress = agent.home / "run" / "progress.json"
    try:
        with faults.round() as injected:
            agent.start("--deploy-args", cp_args(authority))
            wait_state(agent, lambda _s: progress.exists(), "a backup under way")
            agent.kill9()
            injected.inject()
            assert collect(AgentPaths.under(agent.home))["backup_running"] is None
            # Restarted while the authority is away, it backs up nothing: still none running.
            authority.stop()
            agent.start()
            wait_state(agent, lambda s: s.attempts >= 1, "a failed check-in")
            status = agent.status()
            assert status["daemon_running"]
            assert status["backup_running"] is None
            authority.start()
            backup = agent.cli("backup-now")
            assert backup.returncode == 0, backup.stdout + backup.stderr
            assert_restores_exactly(agent, home, tmp_path / "restored")
    finally:
        agent.stop()
