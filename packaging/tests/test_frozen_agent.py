"""The frozen `holdfast` (PyInstaller, `make package`) end to end, against a real authority.

Not under tests/: `make test` neither builds nor needs the executable. After `make package`,
.ci/run runs it with the executable named by HOLDFAST_BINARY:

    HOLDFAST_BINARY=dist/holdfast/holdfast .venv/bin/python -m pytest -q packaging/tests

Only the agent is frozen: the authority, the admin commands and the X11 tray host are the
same real ones as the integration tests', from tests/integration/.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin, admin_json, free_port, initialise
from tests.integration.test_tray import XSession, wait_until

BINARY_VARIABLE = "HOLDFAST_BINARY"
STARTUP_RUNS = 3
USERNAME = "jdoe@example.com"


@dataclass
class FrozenAgent(Agent):
    """The same observed agent as the integration tests', but its commands are the binary's."""

    binary: str = ""

    def command(self, *args: str) -> list[str]:
        return [self.binary, *args, "--home", str(self.home)]


@pytest.fixture(scope="module")
def binary() -> str:
    named = os.environ.get(BINARY_VARIABLE)
    if not named:
        pytest.fail(f"{BINARY_VARIABLE} names no executable; `make package` builds one")
    path = Path(named).resolve()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{BINARY_VARIABLE}={named} is not an executable file")
    return str(path)


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    """A running authority with organization Demo (local) whose policy needs bubblewrap."""
    data = tmp_path / "authority"
    port = free_port()
    initialise(data, port)
    home = tmp_path / "home" / "jdoe"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "notes.txt").write_text("notes\n")
    for folder in (tmp_path, tmp_path / "home", home):
        folder.chmod(0o755)  # detection runs as an unprivileged account
    script = tmp_path / "detect_user.sh"
    script.write_text(f"echo AGENT_USERNAME={USERNAME}\necho AGENT_USER_HOME={home}\n")
    admin(data, "org", "create", "Demo", "--auth", "local")
    admin(data, "policy", "create", "--org", "Demo", "--script", f"linux={script}")
    # No fallback to the weaker sandbox: detection runs under bubblewrap or fails.
    admin(data, "policy", "set", "--org", "Demo", "require_strong_sandbox=true")
    server = Authority(data=data, port=port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def agent(tmp_path: Path, binary: str) -> Iterator[FrozenAgent]:
    running = FrozenAgent(home=tmp_path / "agent", binary=binary)
    running.configure(backup_interval_seconds=3600)  # one backup, then quiet
    try:
        yield running
    finally:
        running.stop()


def test_the_binary_starts_fast_and_says_its_version(
    binary: str, capsys: pytest.CaptureFixture[str]
) -> None:
    best = float("inf")
    for _ in range(STARTUP_RUNS):
        started = time.perf_counter()
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
        best = min(best, time.perf_counter() - started)
        assert done.stdout.startswith("holdfast ")
    folder = Path(binary).parent
    size = sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    with capsys.disabled():
        print(
            f"\nfrozen holdfast: {size / 1e6:.1f} MB (one folder), "
            f"start-up {best * 1000:.0f} ms (--version, best of {STARTUP_RUNS})"
        )


def test_the_frozen_agent_deploys_registers_backs_up_and_stops(
    authority: Authority, agent: FrozenAgent, tmp_path: Path
) -> None:
    install = admin_json(authority.data, "policy", "show", "--org", "Demo")
    token = install["token"]
    agent.start("--deploy-args", install["install_args"]["cp_args"])
    assert agent.process is not None
    status = agent.wait_for(
        lambda s: s["phase"] == "backing_up" and s["last_backup"] is not None,
        timeout=90,
        what="a first backup",
    )
    # Policy fetched, user detected, device registered, first snapshot committed.
    assert status["org"] == "Demo"
    assert status["deployment_url"] == authority.url
    assert status["username"] == USERNAME
    assert status["last_backup"]["files"] == 1
    assert status["last_error"] is None
    [device] = admin_json(authority.data, "device", "list")
    assert device["guid"] == status["device_guid"]
    assert device["registered"] is True
    log = agent.log()
    assert "policy found" in log
    assert "Completed backup" in log
    assert "detection sandbox: bubblewrap" in log
    detection = (agent.home / "log" / "detection.log").read_text()
    assert "isolation=bubblewrap" in detection
    assert f"username={USERNAME}" in detection

    # It started itself again without the arguments: the same process, now the binary alone.
    pid = agent.process.pid
    command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert token.encode() not in b" ".join(command_line)
    assert command_line[:2] == [agent.binary.encode(), b"run"]
    assert os.path.realpath(f"/proc/{pid}/exe") == agent.binary
    assert token not in log

    check_backup_commands(agent, tmp_path / "restored")
    text = agent.cli("status")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("Phase:          backing_up since "), text.stdout

    # The support bundle carries the versions of the bundled libraries (package metadata).
    bundle = tmp_path / "support.zip"
    made = agent.cli("diagnose", "--output", str(bundle))
    assert made.returncode == 0, made.stderr
    with zipfile.ZipFile(bundle) as archive:
        versions = archive.read("versions.txt").decode()
    assert "not installed" not in versions, versions
    assert token not in versions

    stopped = agent.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("Stopped (")
    agent.wait_phase("stopped")

    assert agent.stop() == 0  # SIGTERM: a clean exit
    assert agent.status()["daemon_running"] is False


def check_backup_commands(agent: FrozenAgent, restored: Path) -> None:
    """backup-now, snapshots, restore and logs: each a real round trip from the binary."""
    now = agent.cli("backup-now")
    assert now.returncode == 0, now.stderr
    listed = agent.cli("snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 2
    done = agent.cli("restore", "--to", str(restored))
    assert done.returncode == 0, done.stderr
    assert (restored / "Documents" / "notes.txt").read_text() == "notes\n"
    shown = agent.cli("logs", "--lines", "5")
    assert shown.returncode == 0, shown.stderr


def test_the_frozen_tray_docks_and_its_sign_in_window_opens(
    agent: FrozenAgent, x_server: str, tmp_path: Path
) -> None:
    """pystray's X11 backend, Pillow and Tk (with its Tcl/Tk data), all from the bundle."""
    environment = {**os.environ, "DISPLAY": x_server, "PYSTRAY_BACKEND": "xorg"}
    output = tmp_path / "tray.out"
    with output.open("wb") as out:
        tray = subprocess.Popen(
            agent.command("tray"), env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        with XSession(x_server) as x:
            icon = wait_until(x.docked_icon, "the frozen tray's icon to dock in trayer")
            assert (icon.get_wm_name() or "").startswith("Holdfast")
        tray.terminate()
        assert tray.wait(timeout=30) == 0, output.read_text()
        assert "Traceback" not in output.read_text()
    finally:
        if tray.poll() is None:
            tray.kill()
            tray.wait()

    window = subprocess.Popen(
        agent.command("login-dialog"),
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert window.stdout is not None
        assert window.stdout.readline().strip() == "ready"
    finally:
        window.terminate()
        _, errors = window.communicate(timeout=30)
    assert "Traceback" not in errors
