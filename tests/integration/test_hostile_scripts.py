"""Hostile detection scripts, each a real script run through the real sandbox.

Every one must be contained, under bubblewrap and under the rlimits-only fallback: detection
ends within its timeout with a clear line in detection.log, no process of the script is left,
its scratch folder is gone, the agent's folders are untouched and unread, and the device can
still start processes. The last test prints how many were tried and how many contained.
"""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from agent.detection import DetectionResult, DetectionScript, SandboxSettings, detect
from agent.errors import DetectionError
from tests.conftest import require_tool
from tests.integration.agent_process import Agent
from tests.integration.authority_process import Authority, admin, admin_json, free_port, initialise

BWRAP = shutil.which("bwrap")
LAYERS = ["bubblewrap", "rlimits-only"]
TIMEOUT_S = 2.0
TRIED: list[str] = []
CONTAINED: list[str] = []
SKIPPED: list[str] = []


def new_marker() -> str:
    """A number no other process has on its command line, usable as a `sleep` argument."""
    return f"{1000 + secrets.randbelow(10**6)}.{secrets.randbelow(10**9):09d}"


def survivors(marker: str, within_s: float = 3.0) -> list[str]:
    """Live command lines holding `marker` once `within_s` has passed (or none are left)."""
    deadline = time.monotonic() + within_s
    while True:
        found = [
            " ".join(p.info["cmdline"] or [])
            for p in psutil.process_iter(["cmdline", "status"])
            if marker in " ".join(p.info["cmdline"] or [])
            and p.info["status"] != psutil.STATUS_ZOMBIE
        ]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def processes_of(uid: int) -> int:
    return sum(
        1
        for p in psutil.process_iter(["uids", "status"])
        if p.info["uids"] is not None
        and p.info["uids"].real == uid
        and p.info["status"] != psutil.STATUS_ZOMBIE
    )


def scratch_folders() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "holdfast-detect-*")))


@dataclass
class Device:
    """A fake agent home: conf/deploy.properties with a token, state, and log/detection.log."""

    home: Path
    token: str

    @property
    def conf(self) -> Path:
        return self.home / "conf"

    @property
    def state(self) -> Path:
        return self.home / "state"

    @property
    def detection_log(self) -> Path:
        return self.home / "log" / "detection.log"

    def fingerprint(self) -> dict[str, tuple[int, bytes]]:
        """Mode and content of everything in conf and state."""
        found = {}
        for folder in (self.conf, self.state):
            for path in [folder, *sorted(folder.rglob("*"))]:
                info = path.lstat()
                body = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
                found[str(path)] = (info.st_mode, body)
        return found


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch) -> Iterator[Device]:
    # Not under tmp_path: pytest's own mode-0700 folders there would stop the script, and the
    # point is that the sandbox does. /var/tmp is reachable by every account.
    home = Path(tempfile.mkdtemp(prefix="holdfast-hostile-", dir="/var/tmp"))
    home.chmod(0o755)
    token = "0fb12341-" + secrets.token_hex(16)
    for folder, mode in (("conf", 0o700), ("state", 0o700), ("log", 0o755)):
        (home / folder).mkdir(mode=mode)
    properties = home / "conf" / "deploy.properties"
    properties.write_text(
        f"DEPLOYMENT_URL=https://authority.example\nDEPLOYMENT_POLICY_TOKEN={token}\n"
    )
    properties.chmod(0o600)
    (home / "state" / "state.json").write_text('{"version": 1, "phase": "awaiting_registration"}\n')
    (home / "state" / "state.json").chmod(0o600)
    # As if the token were in the agent's own environment: the script must not see that either.
    monkeypatch.setenv("HOLDFAST_TEST_TOKEN", token)
    try:
        yield Device(home, token)
    finally:
        shutil.rmtree(home)


@dataclass
class Outcome:
    result: DetectionResult | None
    error: DetectionError | None
    record: str  # this run's `end` line in detection.log
    duration_s: float

    @property
    def code(self) -> str:
        return self.error.code if self.error else "user" if self.result else "?"


class Arena:
    """Runs one hostile script and checks what every run must leave behind: nothing."""

    def __init__(self, name: str, device: Device) -> None:
        self.name, self.device = name, device

    def run(
        self,
        layer: str,
        text: str,
        *,
        marker: str,
        policy_sha256: str | None = None,
        needs_root: bool = False,
    ) -> Outcome:
        try:
            if layer == "bubblewrap":
                require_tool(BWRAP is not None, "bubblewrap is not installed (package bubblewrap)")
            if needs_root:
                require_tool(os.geteuid() == 0, "switching to the detection account needs root")
        except pytest.skip.Exception:
            SKIPPED.append(self.name)
            raise
        TRIED.append(self.name)
        script = DetectionScript(
            os="linux",
            filename=f"hostile-{marker}.sh",  # on every shell's command line: findable
            interpreter=("/bin/bash",),
            script=text,
            sha256=policy_sha256 or hashlib.sha256(text.encode()).hexdigest(),
        )
        settings = SandboxSettings(
            bwrap=BWRAP if layer == "bubblewrap" else None,
            require_strong=layer == "bubblewrap",  # never silently run weaker than the case says
            hidden=(str(self.device.conf), str(self.device.state), str(self.device.home / "log")),
        )
        uid = 65534 if os.geteuid() == 0 else os.geteuid()
        before = (scratch_folders(), self.device.fingerprint(), processes_of(uid))
        result, error, started = None, None, time.monotonic()
        try:
            result = detect(
                script, timeout_s=TIMEOUT_S, sandbox=settings, log_path=self.device.detection_log
            )
        except DetectionError as exc:
            error = exc
        duration = time.monotonic() - started
        # The device is healthy: nothing of the script runs, nothing is left, it can fork.
        assert survivors(marker) == []
        assert scratch_folders() == before[0]
        assert self.device.fingerprint() == before[1]
        deadline = time.monotonic() + 3
        while processes_of(uid) > before[2] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_of(uid) <= before[2]
        assert subprocess.run(["true"], check=False).returncode == 0
        assert duration < TIMEOUT_S + 2
        log = self.device.detection_log.read_text("utf-8")
        assert self.device.token not in log
        ends = [line for line in log.splitlines() if " end " in line and script.filename in line]
        assert len(ends) == 1
        return Outcome(result, error, ends[0], duration)

    def contained(self) -> None:
        CONTAINED.append(self.name)


@pytest.fixture
def arena(request: pytest.FixtureRequest, device: Device) -> Arena:
    return Arena(request.node.name, device)


layered = pytest.mark.parametrize("layer", LAYERS)
ALICE = "echo AGENT_USERNAME=alice@example.com\necho AGENT_USER_HOME=/home/alice\n"


@layered
def test_hostile_infinite_loop_is_killed_at_the_timeout(arena: Arena, layer: str) -> None:
    mark = new_marker()
    outcome = arena.run(layer, "while :; do :; done\n", marker=mark)
    assert outcome.code == "timeout"
    assert "result=timeout" in outcome.record
    arena.contained()


@layered
def test_hostile_fork_bomb_is_bounded_and_killed(arena: Arena, layer: str) -> None:
    mark = new_marker()
    outcome = arena.run(layer, "bomb() { bomb | bomb & }\nbomb\nwait\n", marker=mark)
    # It may end by itself once its forks fail, or at the timeout: either way, all of it dies.
    assert outcome.result is None or outcome.result.username is None
    assert "result=" in outcome.record
    arena.contained()


@layered
def test_hostile_background_child_does_not_outlive_the_script(arena: Arena, layer: str) -> None:
    mark = new_marker()
    outcome = arena.run(layer, f"sleep {mark} &\n{ALICE}", marker=mark)
    assert outcome.result is not None and outcome.result.username == "alice@example.com"
    assert "result=user" in outcome.record
    arena.contained()


@layered
def test_hostile_100_mb_of_output_is_too_much_output(arena: Arena, layer: str) -> None:
    mark = new_marker()
    outcome = arena.run(layer, "head -c 100000000 /dev/zero | tr '\\0' x\n", marker=mark)
    assert outcome.code == "too_much_output"
    assert outcome.duration_s < 1.5
    assert "result=too_much_output" in outcome.record
    arena.contained()


@layered
def test_hostile_writes_outside_the_scratch_folder_change_nothing(
    arena: Arena, device: Device, layer: str
) -> None:
    mark = new_marker()
    escape = Path(f"/var/tmp/holdfast-escape-{mark}")
    text = (
        f"echo pwned > {device.state}/state.json\n"
        f"echo pwned > {device.state}/new-file\n"
        f"mkdir {device.conf}/evil\n"
        f"echo pwned > /etc/holdfast-escape-{mark}\n"
        f"echo pwned > {escape}\n"
        f"{ALICE}"
    )
    try:
        outcome = arena.run(layer, text, marker=mark, needs_root=True)
        assert not Path(f"/etc/holdfast-escape-{mark}").exists()
        if layer == "bubblewrap":  # read-only root; without it only permissions protect
            assert not escape.exists()
    finally:
        escape.unlink(missing_ok=True)
    assert "result=user" in outcome.record
    arena.contained()


@layered
def test_hostile_script_cannot_read_the_token(arena: Arena, device: Device, layer: str) -> None:
    mark = new_marker()
    text = (
        "stolen=$( {\n"
        f"  cat {device.conf}/deploy.properties\n"
        "  env\n"
        f"  tr '\\0' '\\n' < /proc/{os.getpid()}/environ\n"
        "  cat /proc/*/environ | tr '\\0' '\\n'\n"
        "} 2>/dev/null | grep -a -o '0fb12341-[0-9a-f]*' | head -1 )\n"
        'echo "stolen: $stolen" >&2\n'
        'echo "AGENT_USERNAME=thief-${stolen:-nothing}"\n'
        "echo AGENT_USER_HOME=/home/thief\n"
    )
    outcome = arena.run(layer, text, marker=mark, needs_root=True)
    assert outcome.result is not None
    assert outcome.result.username == "thief-nothing"
    assert device.token not in outcome.result.run.stdout + outcome.result.run.stderr
    assert device.token not in device.detection_log.read_text("utf-8")
    arena.contained()


def test_hostile_network_connection_to_loopback_is_never_made(arena: Arena) -> None:
    mark = new_marker()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        text = f"echo hello > /dev/tcp/127.0.0.1/{port} && echo connected >&2\n{ALICE}"
        outcome = arena.run("bubblewrap", text, marker=mark)
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert outcome.result is not None
    assert "connected" not in outcome.result.run.stderr
    arena.contained()


@layered
def test_hostile_child_that_calls_setsid_does_not_survive(arena: Arena, layer: str) -> None:
    mark = new_marker()
    outcome = arena.run(
        layer, f"setsid sleep {mark} &\nsetsid -f sleep {mark}\n{ALICE}", marker=mark
    )
    assert outcome.result is not None and outcome.result.username == "alice@example.com"
    arena.contained()


@layered
def test_hostile_sleep_past_the_timeout_is_killed(arena: Arena, layer: str) -> None:
    mark = new_marker()
    outcome = arena.run(layer, f"sleep {mark}\n", marker=mark)
    assert outcome.code == "timeout"
    assert TIMEOUT_S <= outcome.duration_s < TIMEOUT_S + 1
    assert "result=timeout" in outcome.record
    arena.contained()


@layered
@pytest.mark.parametrize(
    ("printed", "code"),
    [
        ("AGENT_USERNAME=root\\033]0;pwned\\007\\nAGENT_USER_HOME=/root\\n", "invalid_username"),
        ("AGENT_USERNAME=alice\\nAGENT_USER_HOME=../../etc\\n", "invalid_home"),
    ],
    ids=["control-characters", "relative-home"],
)
def test_hostile_output_is_refused_and_logged_on_one_line(
    arena: Arena, device: Device, layer: str, printed: str, code: str
) -> None:
    mark = new_marker()
    outcome = arena.run(layer, f"printf '{printed}'\n", marker=mark)
    assert outcome.code == code
    assert f"result={code}" in outcome.record
    text = device.detection_log.read_text("utf-8")
    assert "\x1b" not in text
    assert "\x07" not in text
    arena.contained()


@layered
def test_hostile_script_whose_bytes_do_not_match_the_policy_is_not_run(
    arena: Arena, layer: str
) -> None:
    mark = new_marker()
    expected = hashlib.sha256(ALICE.encode()).hexdigest()
    outcome = arena.run(layer, f"sleep {mark} &\n{ALICE}", marker=mark, policy_sha256=expected)
    assert outcome.code == "script_hash_mismatch"
    assert "result=script_hash_mismatch" in outcome.record
    assert " start " not in outcome.record
    arena.contained()


def test_stopping_the_agent_ends_a_running_detection_script_at_once(tmp_path: Path) -> None:
    """SIGTERM only sets the daemon's flag; the runner polls it and kills the script."""
    mark, data, port = new_marker(), tmp_path / "authority", free_port()
    initialise(data, port)
    script = tmp_path / "detect.sh"
    script.write_text(f"sleep {mark}\n")
    admin(data, "org", "create", "Slow", "--auth", "local")
    admin(data, "policy", "create", "--org", "Slow", "--script", f"linux={script}")
    server, agent = Authority(data=data, port=port), Agent(home=tmp_path / "agent")
    agent.configure(detection_timeout_seconds=300)
    server.start()
    try:
        args = admin_json(data, "policy", "show", "--org", "Slow")["install_args"]["cp_args"]
        agent.start("--deploy-args", args)
        deadline = time.monotonic() + 30
        while not survivors(mark, within_s=0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert survivors(mark, within_s=0), agent.log()
        stopping = time.monotonic()
        assert agent.stop() == 0
        assert time.monotonic() - stopping < 5
        assert survivors(mark) == []
    finally:
        agent.stop()
        server.stop()
    assert "user detection interrupted: the agent is stopping" in agent.log()
    detection_log = (agent.home / "log" / "detection.log").read_text("utf-8")
    assert "result=stopped" in detection_log


def test_zz_report_containment_count(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """Last in the module: every hostile case collected here was tried and contained."""
    cases = [
        item
        for item in request.session.items
        if getattr(item, "module", None) is request.module and "test_hostile_" in item.name
    ]
    # Run alone (-k) there is nothing to count; in CI every case runs, so none may be missing.
    require_tool(bool(TRIED), "no hostile script ran in this session")
    assert len(TRIED) + len(SKIPPED) == len(cases)
    assert CONTAINED == TRIED
    line = f"hostile scripts tried: {len(TRIED)}, contained: {len(CONTAINED)}"
    if SKIPPED:
        line += f", skipped: {len(SKIPPED)}"
    with capsys.disabled():  # shown without -s: the count is the suite's verdict
        print(f"\n{line}")
