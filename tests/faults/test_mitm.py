"""A man in the middle with another certificate: the agent sends it nothing.

The MITM terminates TLS itself, with a certificate from its own CA (trustme), and records
every decrypted byte it receives. The pin check runs inside the handshake, so neither the
deployment token (a new device) nor the device credential (a registered one) ever reaches
it: not even a request line.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from agent.pinning import fingerprints_of, pinned_context
from tests.faults.conftest import FaultTally, cp_args
from tests.faults.invariants import (
    assert_restores_exactly,
    device_guid,
    devices_of,
    wait_state,
)
from tests.faults.proxy import FaultProxy
from tests.faults.relay import TlsRelay
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority

PIN_MISMATCH_EVENT = "HF2102"


@pytest.fixture
def mitm(tmp_path: Path) -> Iterator[TlsRelay]:
    """A TLS server for 127.0.0.1 with a certificate the agent has no pin for."""
    issued = trustme.CA().issue_cert("127.0.0.1")
    certificate, key = tmp_path / "mitm.crt", tmp_path / "mitm.key"
    issued.cert_chain_pems[0].write_to_path(str(certificate))
    issued.private_key_pem.write_to_path(str(key))
    server = TlsRelay(certificate, key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sha1_of(relay_certificate: Path) -> str:
    return fingerprints_of(ssl.PEM_cert_to_DER_cert(relay_certificate.read_text()))[0]


def test_a_new_device_sends_the_mitm_no_byte_and_names_the_fingerprint_it_saw(
    authority: Authority, mitm: TlsRelay, agent: Agent, faults: FaultTally, tmp_path: Path
) -> None:
    seen = sha1_of(tmp_path / "mitm.crt")
    with faults.round() as injected:
        agent.start("--deploy-args", cp_args(authority, url=mitm.url))
        wait_state(agent, lambda s: s.attempts >= 2, "two refused attempts")
        injected.inject(mitm.handshakes)
        assert mitm.handshakes >= 2  # the agent did reach it, and shook hands
        assert bytes(mitm.received) == b""  # no request line: the token never left
        status = agent.status()
        assert status["phase"] == "awaiting_policy"
        assert seen in status["last_error"]
        lines = [line for line in agent.log().splitlines() if PIN_MISMATCH_EVENT in line]
        assert lines and seen in lines[0]
        access = (authority.data / "log" / "access.log").read_text()
        assert "/api/v1/deploy/" not in access
    # The recorder works: a client that does trust this certificate is heard.
    with httpx.Client(base_url=mitm.url, verify=pinned_context([seen]), timeout=5) as trusting:
        assert trusting.get("/api/v1/health").status_code == 502
    assert bytes(mitm.received).startswith(b"GET /api/v1/health HTTP/1.1")


def test_a_registered_device_redirected_to_a_mitm_keeps_its_credential_and_recovers(
    authority: Authority, mitm: TlsRelay, agent: Agent, home: Path, faults: FaultTally
) -> None:
    seen = sha1_of(agent.home.parent / "mitm.crt")
    network = FaultProxy(authority.port)  # passes everything on: a route that can change
    network.start()
    try:
        agent.start("--deploy-args", cp_args(authority, url=network.url))
        wait_state(agent, lambda s: s.last_backup is not None, "a first backup")
        with faults.round() as injected:
            network.upstream_port = mitm.port  # DNS or a router now sends it elsewhere
            refused = agent.cli("backup-now")
            injected.inject(mitm.handshakes)
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert seen in refused.stderr
            assert mitm.handshakes >= 1
            assert bytes(mitm.received) == b""  # the credential never left
            assert seen in agent.status()["last_error"]
            assert any(
                PIN_MISMATCH_EVENT in line and seen in line for line in agent.log().splitlines()
            )
            network.upstream_port = authority.port
            again = agent.cli("backup-now")
            assert again.returncode == 0, again.stdout + again.stderr
            assert len(devices_of(authority, device_guid(agent))) == 1
            assert_restores_exactly(agent, home, agent.home.parent / "restored")
    finally:
        network.stop()
