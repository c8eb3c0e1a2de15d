"""A hostile network between the agent and the authority: dropped connections, a server
that answers late or too late, answers cut short, resets in the middle of the TLS
handshake. The agent is installed with the proxy's address (the pin stays the
authority's); it must retry, register once, back up, and restore byte for byte."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import FaultTally, cp_args
from tests.faults.invariants import (
    assert_restores_exactly,
    assert_state_files_parse,
    device_guid,
    devices_of,
    wait_state,
)
from tests.faults.proxy import Drop, Fault, FaultProxy, Plan, ResetTls, Stall, Truncate
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority

# Longer than the agent's request timeout below (the handshake times out), and shorter.
TIMEOUT_SECONDS = 2
TOO_LATE = Stall(TIMEOUT_SECONDS + 1.0)
LATE = Stall(0.5)

FAULTS: dict[str, list[Fault]] = {
    "drop": [Drop()] * 4,
    "delay": [TOO_LATE, LATE, TOO_LATE, LATE],
    # Nothing of the answer; one record (a TLS session ticket or the answer's head); a few
    # bytes into a record; three records (the answer's head after the tickets, its body cut).
    "truncate": [Truncate(0, 0), Truncate(1, 0), Truncate(0, 40), Truncate(3, 0)],
    # Inside the ServerHello; inside the certificate.
    "reset-mid-tls": [ResetTls(60), ResetTls(600), ResetTls(60), ResetTls(600)],
}


def every_third_connection(faults: list[Fault]) -> Plan:
    """Connections 1, 4, 7, ... get the faults in turn; the others pass. Each attempt
    opens a new connection, so the faults fall on the policy fetch, the registration or
    the check-in, and the backup's own connections, and every retry can succeed."""

    def plan(number: int) -> Fault | None:
        turn, position = divmod(number - 1, 3)
        return faults[turn] if position == 0 and turn < len(faults) else None

    return plan


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    running = Agent(home=tmp_path / "agent")
    running.configure(request_timeout_seconds=TIMEOUT_SECONDS)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("mode", list(FAULTS))
def test_the_agent_registers_and_backs_up_through_a_faulty_network(
    authority: Authority, agent: Agent, home: Path, faults: FaultTally, mode: str
) -> None:
    proxy = FaultProxy(authority.port, every_third_connection(FAULTS[mode]))
    proxy.start()
    try:
        with faults.round() as injected:
            agent.start("--deploy-args", cp_args(authority, url=proxy.url))
            wait_state(agent, lambda s: s.last_backup is not None, "a first backup", timeout=90)
            assert_restores_exactly(agent, home, agent.home.parent / "restored")
            injected.inject(len(proxy.applied))
            # Connections 1 and 4 come in every run (the first policy fetch; a check-in or
            # a registration); how many more depends on the backup's connection pool.
            assert len(proxy.applied) >= 2, proxy.applied
            guid = device_guid(agent)
            assert len(devices_of(authority, guid)) == 1
            assert_state_files_parse(agent.home)
            assert "Traceback" not in agent.log() + agent.output()
    finally:
        proxy.stop()
