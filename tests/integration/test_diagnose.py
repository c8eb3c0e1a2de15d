"""`holdfast diagnose` and `holdfast logs` on a real agent registered with the real authority."""

from __future__ import annotations

import base64
import json
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin_json


@pytest.fixture
def agent(tmp_path: Path, authority: Authority) -> Iterator[Agent]:
    """An agent deployed with the Demo policy's installer arguments, past its first backup."""
    running = Agent(home=tmp_path / "agent")
    running.configure()
    cp_args = admin_json(authority.data, "policy", "show", "--org", "Demo")["install_args"]
    running.start("--deploy-args", cp_args["cp_args"])
    try:
        running.wait_for(
            lambda s: s["phase"] == "backing_up" and s["last_backup"] is not None,
            what="a first backup",
        )
        yield running
    finally:
        running.stop()


def test_the_bundle_of_a_registered_agent_holds_none_of_its_secrets(
    agent: Agent, token: str, tmp_path: Path
) -> None:
    bundle = tmp_path / "support.zip"
    result = agent.cli("diagnose", "--output", str(bundle))
    assert result.returncode == 0, result.stderr
    assert str(bundle) in result.stdout
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600

    state = agent.home / "state"
    credential = (state / "credential").read_text().strip()
    key = base64.b64decode(json.loads((state / "backup.key").read_text())["key"])
    secrets = {
        "token": token,
        "token, upper case": token.upper(),
        "credential": credential,
        "backup key, base64": base64.b64encode(key).decode(),
        "backup key, hex": key.hex(),
    }
    assert token in (agent.home / "conf" / "deploy.properties").read_text()  # read the real one
    with zipfile.ZipFile(bundle) as archive:
        found = {name: archive.read(name) for name in archive.namelist()}
    for name, data in found.items():
        for what, secret in secrets.items():
            assert secret.encode() not in data, f"the {what} is in {name}"

    assert {"log/agent.log", "status.json", "conf/deploy.properties", "state/state.json"} <= set(
        found
    )
    assert "state/credential" not in found and "state/backup.key" not in found
    assert b"Completed backup" in found["log/agent.log"]
    assert json.loads(found["status.json"])["phase"] == "backing_up"
    assert b"DEPLOYMENT_POLICY_TOKEN=[redacted]" in found["conf/deploy.properties"]
    # The preflight ran from the bundled settings: it reached the real authority.
    doctor = found["doctor.txt"].decode()
    assert "OK    TCP" in doctor and "OK    token" in doctor, doctor


def test_logs_prints_the_last_lines_of_the_real_log(agent: Agent) -> None:
    assert agent.stop() == 0  # nothing is written while the lines are compared
    result = agent.cli("logs", "--lines", "5")
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert len(printed) == 5
    assert printed == agent.log().splitlines()[-5:]
    assert "stopping on request" in printed[-1]
