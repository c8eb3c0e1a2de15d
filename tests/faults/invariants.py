"""What must hold after any fault: whole state files, one device, a restorable snapshot."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.backup.keys import load_master_key
from agent.deploy_args import read_properties_file
from agent.identity import IDENTITY_VERSION
from agent.lifecycle import State
from agent.paths import AgentPaths
from agent.registration import load_credential
from agent.state import load_state, read_json
from tests.faults.workload import differences
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin_json


def assert_state_files_parse(home: Path) -> State:
    """Every state file the agent left is whole and of this version, as the agent reads
    it at start (state.json, identity, credential, backup key, deploy.properties)."""
    paths = AgentPaths.under(home)
    state = load_state(paths.state_file)  # StateError when damaged
    read_json(paths.identity, IDENTITY_VERSION)
    if paths.credential.exists():
        assert load_credential(paths.credential), f"{paths.credential} is empty"
    load_master_key(paths.state)  # BackupError when damaged
    if paths.deploy_properties.exists():
        read_properties_file(paths.deploy_properties)
    return state


def device_guid(agent: Agent) -> str:
    body = json.loads((agent.home / "state" / "identity").read_text())
    return str(body["guid"])


def devices_of(authority: Authority, guid: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = admin_json(authority.data, "device", "list")
    return [d for d in found if d["guid"] == guid]


def read_state(agent: Agent) -> State:
    """The persisted state, read directly: much cheaper than `holdfast status` per poll."""
    return load_state(AgentPaths.under(agent.home).state_file)


def wait_state(
    agent: Agent, predicate: Callable[[State], bool], what: str, timeout: float = 60
) -> State:
    """Poll state.json until `predicate` holds, while the daemon runs."""
    deadline = time.monotonic() + timeout
    while True:
        state = read_state(agent)
        if predicate(state):
            return state
        alive = agent.process is not None and agent.process.poll() is None
        if not alive or time.monotonic() > deadline:
            raise AssertionError(
                f"agent did not reach {what} ({'exited' if not alive else 'timed out'}): "
                f"{state}\n--- agent.log ---\n{agent.log()}\n--- agent.out ---\n{agent.output()}"
            )
        time.sleep(0.02)


def wait_started(agent: Agent, starts: int, timeout: float = 60) -> None:
    """Wait for the daemon's `starts`-th STARTED line: its control channel then listens."""
    deadline = time.monotonic() + timeout
    while agent.log().count("STARTED holdfast") < starts:
        alive = agent.process is not None and agent.process.poll() is None
        if not alive or time.monotonic() > deadline:
            raise AssertionError(
                f"the agent did not start ({'exited' if not alive else 'timed out'})\n"
                f"--- agent.log ---\n{agent.log()}\n--- agent.out ---\n{agent.output()}"
            )
        time.sleep(0.02)


def assert_restores_exactly(agent: Agent, home: Path, target: Path) -> None:
    """`holdfast restore --to target` gives `home` back byte for byte."""
    restored = agent.cli("restore", "--to", str(target))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    problems = differences(home, target)
    assert not problems, "the restore differs from the home:\n" + "\n".join(problems[:20])
