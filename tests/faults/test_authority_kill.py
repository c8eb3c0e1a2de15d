"""The authority killed (SIGKILL) and started again in the middle of the agent's work.

The agent talks to the authority through a relay that holds the authority's own
certificate: it passes everything on, except that it can hold back the answer to one
request. The test lets the authority carry the request out (the registration recorded, the
pack stored, the snapshot committed), kills it before the answer leaves, and drops the
agent's connection: the worst moment, when the authority has done what the agent believes
failed. The agent retries, the authority comes back, and nothing is there twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import FaultTally, cp_args
from tests.faults.invariants import (
    assert_restores_exactly,
    assert_state_files_parse,
    device_guid,
    devices_of,
    read_state,
    wait_state,
)
from tests.faults.relay import TlsRelay
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority


@pytest.fixture
def relay(authority: Authority) -> Iterator[TlsRelay]:
    tls = authority.data / "tls"
    running = TlsRelay(tls / "current.crt", tls / "current.key", authority.port)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def kill9(authority: Authority) -> None:
    assert authority.process is not None
    authority.process.kill()
    authority.process.wait()
    authority.process = None


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def answered(authority: Authority, request: str) -> bool:
    """Whether the authority has carried out and answered `request` ("METHOD /path")."""
    access = (authority.data / "log" / "access.log").read_text()
    return any(request in line and "status=200" in line for line in access.splitlines())


def noticed(agent: Agent) -> bool:
    """Whether the agent saw its request fail: a failed attempt, or a retry on the spot."""
    return read_state(agent).attempts >= 1 or "request to the authority failed" in agent.log()


@pytest.mark.parametrize(
    "request_line",
    [
        "POST /api/v1/deploy/register",  # the device recorded, its credential never received
        "PUT /api/v1/device/packs/",  # a pack stored; other uploads may be half sent
        "POST /api/v1/device/snapshots",  # the snapshot committed, the agent unaware
    ],
    ids=["registration", "pack upload", "snapshot commit"],
)
def test_the_authority_killed_after_doing_what_the_agent_then_retries_duplicates_nothing(
    authority: Authority,
    relay: TlsRelay,
    agent: Agent,
    faults: FaultTally,
    request_line: str,
) -> None:
    with faults.round() as injected:
        relay.hold_answer(lambda line: line.startswith(request_line))
        agent.start("--deploy-args", cp_args(authority, url=relay.url))
        assert relay.holding.wait(60), f"no {request_line} reached the relay"
        wait_until(lambda: answered(authority, request_line), f"the authority to do {request_line}")
        kill9(authority)  # other requests may be half way through their bodies
        injected.inject()
        relay.release()
        wait_until(lambda: noticed(agent), "the agent to see its request fail")
        authority.start()
        state = wait_state(agent, lambda s: s.last_backup is not None, "a backup", timeout=90)
        guid = device_guid(agent)
        assert [d["guid"] for d in devices_of(authority, guid)] == [guid]
        listed = agent.cli("snapshots", "--json")
        assert listed.returncode == 0, listed.stderr
        snapshots = json.loads(listed.stdout)
        manifests = [s["manifest_id"] for s in snapshots]
        assert len(manifests) == len(set(manifests)), snapshots  # no snapshot twice
        assert state.last_backup is not None
        assert state.last_backup["snapshot_id"] in {s["snapshot_id"] for s in snapshots}
        assert_state_files_parse(agent.home)
        assert state.user_home is not None
        assert_restores_exactly(agent, Path(state.user_home), agent.home.parent / "restored")
        assert "Traceback" not in agent.log() + agent.output()
