"""The agent's deployment lifecycle, each case a real `holdfast run` against a real authority."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin, admin_json, free_port, initialise

CONTRACT_KEYS = {
    "phase",
    "daemon_running",
    "since",
    "next_attempt_at",
    "attempts",
    "last_error",
    "deployment_url",
    "username",
    "user_home",
    "org",
    "device_guid",
    "last_backup",
}


def cp_args(authority: Authority, org: str = "Demo") -> str:
    value: str = admin_json(authority.data, "policy", "show", "--org", org)["install_args"][
        "cp_args"
    ]
    return value


def devices(authority: Authority) -> list[dict[str, object]]:
    found: list[dict[str, object]] = admin_json(authority.data, "device", "list")
    return found


def test_happy_path_reaches_backing_up_and_commits_a_first_backup(
    authority: Authority, agent: Agent, token: str
) -> None:
    agent.start("--deploy-args", cp_args(authority))
    status = agent.wait_for(
        lambda s: s["phase"] == "backing_up" and s["last_backup"] is not None,
        what="a first backup",
    )
    assert set(status) >= CONTRACT_KEYS
    assert status["username"] == "jdoe@example.com"
    assert status["user_home"] == str(authority.data.parent / "home" / "jdoe")
    assert status["org"] == "Demo"
    assert status["deployment_url"] == authority.url
    assert status["last_backup"]["files"] == 1
    assert status["last_error"] is None
    [device] = devices(authority)
    assert device["guid"] == status["device_guid"]
    assert device["registered"] is True
    assert "Completed backup" in agent.log()
    assert agent.stop() == 0  # SIGTERM is a clean exit
    after = agent.status()
    assert after["phase"] == "backing_up" and after["daemon_running"] is False


def test_the_token_is_not_in_the_process_list_logs_or_status(
    authority: Authority, agent: Agent, token: str
) -> None:
    agent.start("--deploy-args", cp_args(authority))
    agent.wait_phase("backing_up")
    processes = subprocess.run(
        ["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True
    )
    assert token not in processes.stdout
    assert str(agent.home) in processes.stdout  # the re-executed agent is there, without it
    status = subprocess.run(agent.command("status"), capture_output=True, text=True, check=True)
    assert token not in status.stdout
    assert token not in agent.log() + agent.output()
    credential = (agent.home / "state" / "credential").read_text().strip()
    assert credential not in agent.log()
    assert (agent.home / "conf" / "deploy.properties").stat().st_mode & 0o077 == 0
    assert (agent.home / "state" / "credential").stat().st_mode & 0o077 == 0


def test_an_agent_started_before_its_server_registers_once_the_server_starts(
    tmp_path: Path, agent: Agent
) -> None:
    data = tmp_path / "authority"
    port = free_port()
    initialise(data, port)
    script = tmp_path / "detect.sh"
    script.write_text("echo C42_USERNAME=ann@example.com\necho C42_USER_HOME=/home/ann\n")
    admin(data, "org", "create", "Late", "--auth", "local")
    admin(data, "policy", "create", "--org", "Late", "--script", f"linux={script}")
    server = Authority(data=data, port=port)
    agent.start("--deploy-args", cp_args(server, "Late"))
    waiting = agent.wait_for(
        lambda s: s["phase"] == "awaiting_policy" and s["attempts"] >= 2, what="failed attempts"
    )
    assert "cannot reach the authority" in waiting["last_error"]
    server.start()
    try:
        status = agent.wait_phase("backing_up")
        assert status["username"] == "ann@example.com"
    finally:
        server.stop()


def test_a_token_rotated_before_install_keeps_the_agent_awaiting_policy_and_says_why(
    authority: Authority, agent: Agent, token: str
) -> None:
    old_args = cp_args(authority)
    admin(authority.data, "policy", "rotate-token", "--org", "Demo")
    agent.start("--deploy-args", old_args)
    status = agent.wait_for(
        lambda s: s["attempts"] >= 2 and s["phase"] == "awaiting_policy", what="retries"
    )
    assert "replaced" in status["last_error"]
    assert "token_rotated" in agent.log()
    assert admin_json(authority.data, "device", "list") == []


def test_a_corrected_deploy_properties_is_picked_up_on_the_next_retry(
    authority: Authority, agent: Agent, token: str
) -> None:
    old_args = cp_args(authority)
    admin(authority.data, "policy", "rotate-token", "--org", "Demo")
    agent.start("--deploy-args", old_args)
    agent.wait_for(lambda s: s["attempts"] >= 1, what="a failed attempt")
    fixed = admin_json(authority.data, "policy", "show", "--org", "Demo")["install_args"]
    (agent.home / "conf" / "deploy.properties").write_text(fixed["deploy_properties"])
    agent.wait_phase("backing_up")


def test_a_token_rotated_after_registration_does_not_affect_the_device(
    authority: Authority, agent: Agent, token: str
) -> None:
    agent.start("--deploy-args", cp_args(authority))
    agent.wait_phase("backing_up")
    admin(authority.data, "policy", "rotate-token", "--org", "Demo")
    rotated_at = dt.datetime.now(dt.UTC)

    def checked_in_since_rotation(status: dict[str, object]) -> bool:
        [device] = devices(authority)
        seen = dt.datetime.fromisoformat(str(device["last_seen_at"]))
        return seen > rotated_at and status["phase"] == "backing_up" and not status["last_error"]

    agent.wait_for(checked_in_since_rotation, what="a check-in after the rotation")
    assert len(devices(authority)) == 1


def test_a_wrong_ssl_whitelist_never_sends_a_request_and_logs_the_fingerprint_seen(
    authority: Authority, agent: Agent, token: str
) -> None:
    wrong = cp_args(authority).rsplit("SSL_WHITELIST=", 1)[0] + "SSL_WHITELIST=" + "ab" * 20
    agent.start("--deploy-args", wrong)
    status = agent.wait_for(lambda s: s["attempts"] >= 2, what="failed attempts")
    assert status["phase"] == "awaiting_policy"
    presented = authority.pins()[0]
    assert presented in status["last_error"]
    assert "SSL_WHITELIST" in agent.log() and presented in agent.log()
    access = (authority.data / "log" / "access.log").read_text()
    assert "/api/v1/deploy" not in access


def test_kill_9_during_registration_then_restart_leaves_exactly_one_device(
    authority: Authority, agent: Agent, token: str
) -> None:
    agent.start("--deploy-args", cp_args(authority))
    access = authority.data / "log" / "access.log"
    agent.wait_for(
        lambda s: "/api/v1/deploy/register" in access.read_text(), what="a registration request"
    )
    agent.kill9()
    agent.start()
    agent.wait_phase("backing_up")
    found = devices(authority)
    assert len(found) == 1
    assert found[0]["guid"] == agent.status()["device_guid"]


@pytest.mark.parametrize("phase", ["awaiting_policy", "awaiting_registration", "backing_up"])
def test_a_restart_resumes_the_phase_it_was_in(
    authority: Authority, agent: Agent, token: str, phase: str, tmp_path: Path
) -> None:
    args = cp_args(authority)
    if phase == "awaiting_policy":
        args = args.replace(token, "0fb12341-246b-448d-b07f-c6573ad5ad02")
    elif phase == "awaiting_registration":
        silent = tmp_path / "nobody.sh"
        silent.write_text("exit 0\n")
        admin(authority.data, "org", "create", "Empty", "--auth", "local")
        admin(authority.data, "policy", "create", "--org", "Empty", "--script", f"linux={silent}")
        args = cp_args(authority, "Empty")
    agent.start("--deploy-args", args)
    before = agent.wait_phase(phase)
    assert agent.stop() == 0
    agent.start()
    after = agent.wait_phase(phase)
    assert after["device_guid"] == before["device_guid"]
    assert after["daemon_running"] is True


def test_an_identity_copied_to_other_hardware_registers_as_a_new_device(
    authority: Authority, agent: Agent, token: str, tmp_path: Path
) -> None:
    agent.start("--deploy-args", cp_args(authority))
    original = agent.wait_phase("backing_up")["device_guid"]
    agent.stop()
    clone = Agent(home=tmp_path / "clone")
    shutil.copytree(agent.home, clone.home)
    (clone.home / "machine-id").write_text("another-machine\n")
    clone.configure()
    clone.start()
    try:
        cloned = clone.wait_phase("backing_up")
    finally:
        clone.stop()
    assert cloned["device_guid"] != original
    assert {d["guid"] for d in devices(authority)} == {original, cloned["device_guid"]}
    assert "cloned" in clone.log()


def test_status_has_every_contract_key_in_every_phase(
    authority: Authority, agent: Agent, token: str
) -> None:
    unconfigured = agent.status()
    assert unconfigured["phase"] == "unconfigured" and set(unconfigured) >= CONTRACT_KEYS
    agent.start("--deploy-args", cp_args(authority))
    assert set(agent.wait_phase("backing_up")) >= CONTRACT_KEYS


def test_bad_installer_arguments_exit_2_naming_the_key_and_persist_nothing(agent: Agent) -> None:
    result = subprocess.run(
        agent.command(
            "run",
            "--deploy-args",
            "DEPLOYMENT_URL=http://h:4285&DEPLOYMENT_POLICY_TOKEN=0fb12341-246b-448d-b07f-c6573ad5ad02",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "DEPLOYMENT_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (agent.home / "conf" / "deploy.properties").exists()


def test_a_certificate_rollover_reaches_registered_agents_before_the_switch(
    authority: Authority, agent: Agent, token: str
) -> None:
    agent.start("--deploy-args", cp_args(authority))
    agent.wait_phase("backing_up")
    admin(authority.data, "tls", "renew")
    next_pin = authority.pins()[1]
    state_file = agent.home / "state" / "state.json"
    agent.wait_for(
        lambda s: next_pin in state_file.read_text(), what="the staged certificate's pin"
    )
    admin(authority.data, "tls", "activate")
    activated_at = dt.datetime.now(dt.UTC)

    def checked_in_after_switch(status: dict[str, object]) -> bool:
        [device] = devices(authority)
        seen = dt.datetime.fromisoformat(str(device["last_seen_at"]))
        return seen > activated_at + dt.timedelta(seconds=3) and not status["last_error"]

    agent.wait_for(checked_in_after_switch, timeout=40, what="a check-in over the new certificate")
    assert "tls_pin_mismatch" not in agent.log()
