"""Stop and start through the control channel of a real daemon, by allowed and refused users."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.control import SOCKET_NAME
from tests.conftest import require_tool
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin, admin_json

NOBODY = pwd.getpwnam("nobody")
UNREACHABLE = "DEPLOYMENT_URL=https://127.0.0.1:9&DEPLOYMENT_POLICY_TOKEN=0fb12341-246b-448d-b07f-c6573ad5ad02"


@pytest.fixture
def agent() -> Iterator[Agent]:
    # Not under pytest's tmp_path (mode 0700): other users must reach run/control.sock, as
    # they reach /run/holdfast on a real device.
    home = Path(tempfile.mkdtemp(prefix="holdfast-control-"))
    home.chmod(0o755)
    running = Agent(home=home / "agent")
    running.configure()
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(home, ignore_errors=True)


def as_nobody(agent: Agent, command: str) -> subprocess.CompletedProcess[str]:
    """`holdfast COMMAND` from a process that dropped to `nobody` before connecting."""
    require_tool(os.geteuid() == 0, "switching to nobody needs root")
    # Everything is imported first: the interpreter's own files may not be readable by nobody.
    code = (
        "import os, sys\n"
        "import agent.control, agent.status\n"
        "from agent.cli import main\n"
        f"os.setgroups([]); os.setgid({NOBODY.pw_gid}); os.setuid({NOBODY.pw_uid})\n"
        f"sys.exit(main([{command!r}, '--home', {str(agent.home)!r}]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


def holdfast(agent: Agent, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent.command(command), capture_output=True, text=True, timeout=60, check=False
    )


def test_stop_persists_across_a_restart_and_start_resumes_the_phase(agent: Agent) -> None:
    agent.start("--deploy-args", UNREACHABLE)
    agent.wait_phase("awaiting_policy")
    stopped = holdfast(agent, "stop")
    assert stopped.returncode == 0, stopped.stderr
    status = agent.wait_phase("stopped")
    assert status["stopped_by"].startswith("root at ")
    attempts_log = agent.log().count("Retrieving deployment policy")

    assert agent.stop() == 0
    agent.start()
    assert agent.wait_phase("stopped")["stopped_by"] == status["stopped_by"]
    assert agent.log().count("Retrieving deployment policy") == attempts_log  # nothing ran

    started = holdfast(agent, "start")
    assert started.returncode == 0, started.stderr
    resumed = agent.wait_phase("awaiting_policy")
    assert resumed["stopped_by"] is None
    agent.wait_for(lambda s: s["attempts"] >= 1, what="a fresh attempt after start")


def test_a_user_who_is_not_the_devices_user_is_refused_with_exit_4_and_a_log_line(
    agent: Agent,
) -> None:
    agent.start("--deploy-args", UNREACHABLE)
    agent.wait_phase("awaiting_policy")
    refused = as_nobody(agent, "stop")
    assert refused.returncode == 4, refused.stderr
    assert "has no session on this device" in refused.stderr
    assert agent.status()["phase"] == "awaiting_policy"
    assert "refused stop from nobody" in agent.log()


def test_no_daemon_means_exit_3(agent: Agent) -> None:
    result = holdfast(agent, "stop")
    assert result.returncode == 3
    assert "not running" in result.stderr


@pytest.fixture
def nobody_registered(authority: Authority, agent: Agent, tmp_path: Path) -> Agent:
    """An agent registered to a user whose home is nobody's: nobody is the device's user."""
    script = tmp_path / "nobody.sh"
    script.write_text(
        f"echo AGENT_USERNAME=nobody@example.com\necho AGENT_USER_HOME={NOBODY.pw_dir}\n"
    )
    admin(authority.data, "org", "create", "Own", "--auth", "local")
    admin(authority.data, "policy", "create", "--org", "Own", "--script", f"linux={script}")
    cp_args = admin_json(authority.data, "policy", "show", "--org", "Own")["install_args"][
        "cp_args"
    ]
    agent.start("--deploy-args", cp_args)
    agent.wait_phase("backing_up")
    return agent


def test_the_devices_user_may_stop_and_start(nobody_registered: Agent) -> None:
    agent = nobody_registered
    stopped = as_nobody(agent, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert agent.wait_phase("stopped")["stopped_by"].startswith("nobody at ")
    started = as_nobody(agent, "start")
    assert started.returncode == 0, started.stderr
    agent.wait_phase("backing_up")


def test_a_policy_that_forbids_user_stop_refuses_and_says_why(
    nobody_registered: Agent, authority: Authority
) -> None:
    agent = nobody_registered
    admin(authority.data, "policy", "set", "--org", "Own", "allow_user_stop=false")
    # The device picks the change up at its next check-in (backup_interval_seconds: 2).
    state_file = agent.home / "state" / "state.json"
    agent.wait_for(
        lambda s: '"allow_user_stop": false' in state_file.read_text(), what="the new policy"
    )
    refused = as_nobody(agent, "stop")
    assert refused.returncode == 4
    assert "policy does not allow users to stop" in refused.stderr
    assert holdfast(agent, "stop").returncode == 0  # an administrator still may


def test_garbage_floods_and_half_closed_connections_do_not_hurt_the_daemon(agent: Agent) -> None:
    agent.start("--deploy-args", UNREACHABLE)
    agent.wait_phase("awaiting_policy")
    path = str(agent.home / "run" / SOCKET_NAME)

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock

    answers = []
    for payload in (b"\xff\xfe garbage\n", b"{}\n", b'{"command": "rm -rf"}\n', b"x" * 70000):
        with connect() as sock:
            sock.sendall(payload)
            answers.append(json.loads(sock.makefile().readline()))
    assert all(a["ok"] is False for a in answers)
    with connect() as sock:
        sock.sendall(b'{"command": "status"')
        sock.shutdown(socket.SHUT_WR)  # half-closed, request never finished
        assert json.loads(sock.makefile().readline())["ok"] is False
    idle = []
    for _ in range(100):  # a flood that sends nothing; some may find the backlog full
        with contextlib.suppress(BlockingIOError):
            idle.append(connect())
    try:
        result = holdfast(agent, "status")
    finally:
        for sock in idle:
            sock.close()
    assert result.returncode == 0
    stopped = holdfast(agent, "stop")
    assert stopped.returncode == 0, stopped.stderr
