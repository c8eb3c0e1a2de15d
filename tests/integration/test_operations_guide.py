"""The common situations of docs/operations.md ("Ten common situations"), each produced for
real, with the log line the guide quotes asserted. The directory ones (4 and 5) are in
test_directory_registration.py, next to the slapd they need; the full disk (10) is made
by the failure the daemon builds from the operating system's error."""

from __future__ import annotations

import errno
import re
import subprocess
from pathlib import Path

from agent import logs
from agent.daemon import failure_of
from agent.lifecycle import State
from agent.lifecycle_model import Phase
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin, free_port
from tests.integration.test_agent_lifecycle import cp_args


def line_of(agent: Agent, pattern: str) -> str:
    """The first agent.log line matching `pattern` (a regular expression)."""
    for line in agent.log().splitlines():
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matches {pattern!r} in:\n{agent.log()}")


def history(agent: Agent) -> str:
    path = agent.home / "log" / "history.log"
    return path.read_text("utf-8") if path.exists() else ""


def with_script(authority: Authority, tmp_path: Path, body: str) -> str:
    """Installer arguments of a new organization whose detection script is `body`."""
    script = tmp_path / "script.sh"
    script.write_text(body)
    admin(authority.data, "org", "create", "Scripted", "--auth", "local")
    admin(authority.data, "policy", "create", "--org", "Scripted", "--script", f"linux={script}")
    return cp_args(authority, "Scripted")


def test_1_the_authority_cannot_be_reached(agent: Agent, authority: Authority) -> None:
    port = free_port()
    args = cp_args(authority).replace(f":{authority.port}", f":{port}")
    agent.start("--deploy-args", args)
    agent.wait_for(lambda s: s["attempts"] >= 2, what="failed attempts")
    line = line_of(agent, r"attempt failed: cannot reach the authority")
    assert (
        " WARNING HF2101 [awaiting_policy] attempt failed: cannot reach the authority at " in line
    )
    assert "Connection refused; next attempt at " in line
    assert line.endswith("code=connect_failed attempts=1")
    assert "attempt failed: cannot reach the authority" in history(agent)
    shown = subprocess.run(
        agent.command("status"), capture_output=True, text=True, timeout=60, check=False
    )
    assert "(connect_failed, HF2101 in the guide)" in shown.stdout


def test_2_the_certificate_does_not_match_the_pin(agent: Agent, authority: Authority) -> None:
    wrong = cp_args(authority).rsplit("SSL_WHITELIST=", 1)[0] + "SSL_WHITELIST=" + "ab" * 20
    agent.start("--deploy-args", wrong)
    agent.wait_for(lambda s: s["attempts"] >= 1, what="a failed attempt")
    line = line_of(agent, r"HF2102")
    assert (
        " WARNING HF2102 [awaiting_policy] attempt failed: the server's certificate (sha1 " in line
    )
    assert "is not in SSL_WHITELIST" in line and "code=tls_pin_mismatch" in line


def test_3_the_token_was_rotated(agent: Agent, authority: Authority) -> None:
    old = cp_args(authority)
    admin(authority.data, "policy", "rotate-token", "--org", "Demo")
    agent.start("--deploy-args", old)
    agent.wait_for(lambda s: s["attempts"] >= 1, what="a failed attempt")
    line = line_of(agent, r"HF2103")
    assert " WARNING HF2103 [awaiting_policy] attempt failed: " in line
    assert "code=token_rotated" in line


def test_6_detection_found_no_user(agent: Agent, authority: Authority, tmp_path: Path) -> None:
    agent.start("--deploy-args", with_script(authority, tmp_path, "exit 0\n"))
    agent.wait_for(
        lambda s: s["phase"] == "awaiting_registration" and s["attempts"] >= 1,
        what="a failed detection",
    )
    line = line_of(agent, r"HF3101")
    assert (
        " WARNING HF3101 [awaiting_registration] attempt failed: the detection script "
        "reported no user yet (nobody logged in?)" in line
    )
    assert "code=no_user_detected" in line


def test_7_the_detection_script_fails(agent: Agent, authority: Authority, tmp_path: Path) -> None:
    agent.start("--deploy-args", with_script(authority, tmp_path, "echo broken >&2\nexit 3\n"))
    agent.wait_for(
        lambda s: s["phase"] == "awaiting_registration" and s["attempts"] >= 1,
        what="a failed detection",
    )
    line = line_of(agent, r"HF3102")
    assert " WARNING HF3102 [awaiting_registration] attempt failed: user detection failed: " in line


def test_8_stopped_by_the_user(agent: Agent, authority: Authority) -> None:
    agent.start("--deploy-args", cp_args(authority))
    agent.wait_phase("backing_up")
    stopped = subprocess.run(
        agent.command("stop"), capture_output=True, text=True, timeout=60, check=False
    )
    assert stopped.returncode == 0, stopped.stderr
    agent.wait_phase("stopped")
    line = line_of(agent, r"HF1010")
    assert re.search(
        r" INFO +HF1010 \[backing_up\] stopped by root \(uid 0, pid \d+\): nothing runs until "
        r"started again user=root$",
        line,
    ), line
    assert "stopped by root" in history(agent)


def test_9_the_organization_was_deactivated(agent: Agent, authority: Authority) -> None:
    args = cp_args(authority)
    admin(authority.data, "org", "deactivate", "Demo")
    agent.start("--deploy-args", args)
    agent.wait_for(lambda s: s["attempts"] >= 1, what="a failed attempt")
    line = line_of(agent, r"HF2104")
    assert " WARNING HF2104 [awaiting_policy] attempt failed: " in line
    assert "code=org_deactivated" in line


def test_10_the_agents_disk_is_full(tmp_path: Path) -> None:
    logs.setup(tmp_path / "agent.log", history_file=tmp_path / "history.log")
    try:
        full = OSError(errno.ENOSPC, "No space left on device", "/var/lib/holdfast/state/cache")
        failed = failure_of(full)
        logs.log_transition(
            State(phase=Phase.BACKING_UP),
            State(phase=Phase.BACKING_UP, attempts=1),
            failed,
        )
    finally:
        logs.close()
        logs._streak.reset()
    line = (tmp_path / "agent.log").read_text().splitlines()[-1]
    assert (
        " WARNING HF1104 [backing_up] attempt failed: the agent's disk is full "
        "(/var/lib/holdfast/state/cache): No space left on device; next attempt at " in line
    )
    assert line.endswith("code=disk_full attempts=1")
    assert "disk is full" in (tmp_path / "history.log").read_text()
