"""The tray's model (what it says, what is enabled, what its actions do) and its icon."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.desktop import LoginDialog, home_of, open_in_file_manager
from agent.errors import AgentError, DaemonUnavailable, Refused
from agent.lifecycle import Phase, State
from agent.paths import ENV_HOME, AgentPaths
from agent.state import save_state
from agent.tray import MAX_TOOLTIP, NO_DESKTOP, TrayModel, run
from agent.tray_icon import COLOURS, IconState, draw

TEN_FIVE = dt.datetime(2030, 1, 2, 10, 5).astimezone().isoformat()


def status(phase: str = "awaiting_policy", **overrides: Any) -> dict[str, Any]:
    """A status object as agent.status.collect returns it, trimmed to what the tray reads."""
    waiting_for = {
        "unconfigured": "installer arguments (deploy.properties or run --deploy-args)",
        "awaiting_policy": "the deployment policy from the authority",
        "awaiting_registration": "user detection and registration",
        "awaiting_sign_in": "the user to sign in (manual registration policy)",
        "backing_up": "the next scheduled backup",
        "stopped": "a user to start it again",
    }[phase]
    body: dict[str, Any] = {
        "phase": phase,
        "daemon_running": True,
        "next_attempt_at": None,
        "last_error": None,
        "waiting_for": waiting_for,
        "username": None,
        "stopped_by": None,
        "last_backup": None,
        "tray_hidden": False,
    }
    return {**body, **overrides}


class Recorder:
    """The model's effects, recorded; `fail` makes the control client raise."""

    def __init__(self, after: dict[str, Any] | None = None) -> None:
        self.commands: list[str] = []
        self.notes: list[str] = []
        self.fail: Exception | None = None
        self.after = after or status()
        self.reloads = 0

    def control(self, command: str) -> dict[str, Any]:
        self.commands.append(command)
        if self.fail is not None:
            raise self.fail
        return {"phase": self.after["phase"]}

    def read_status(self) -> dict[str, Any]:
        self.reloads += 1
        return self.after


def model_of(body: dict[str, Any], recorder: Recorder | None = None, **kw: Any) -> TrayModel:
    recorder = recorder or Recorder()
    return TrayModel(
        status=body,
        control=recorder.control,
        read_status=recorder.read_status,
        open_folder=kw.pop("open_folder", lambda: None),
        open_sign_in=kw.pop("open_sign_in", lambda: None),
        notify=recorder.notes.append,
        **kw,
    )


@pytest.mark.parametrize(
    ("body", "tooltip"),
    [
        (status("backing_up"), "Holdfast: backing up — last backup none yet"),
        (
            status(
                "backing_up",
                last_backup={"finished_at": TEN_FIVE, "files": 1, "bytes": 1, "snapshot_id": "s"},
            ),
            "Holdfast: backing up — last backup 10:05",
        ),
        (
            status("stopped", stopped_by="alice at 2030-01-02T10:05:00+00:00"),
            "Holdfast: stopped by alice",
        ),
        (
            status("awaiting_policy", next_attempt_at=TEN_FIVE),
            "Holdfast: waiting for the deployment policy from the authority (next attempt 10:05)",
        ),
        (
            status("awaiting_registration"),
            "Holdfast: waiting for user detection and registration",
        ),
        (
            status("awaiting_sign_in"),
            "Holdfast: waiting for the user to sign in (manual registration policy)",
        ),
        (
            status("unconfigured"),
            "Holdfast: waiting for installer arguments (deploy.properties or run --deploy-args)",
        ),
        (status("backing_up", daemon_running=False), "Holdfast: the agent is not running"),
        (status("stopped", daemon_running=False), "Holdfast: the agent is not running"),
    ],
)
def test_the_tooltip_says_where_the_agent_stands(body: dict[str, Any], tooltip: str) -> None:
    model = model_of(body)
    assert model.tooltip == tooltip
    summary = tooltip.removeprefix("Holdfast: ")
    assert model.status_line == summary[0].upper() + summary[1:]


def test_a_long_waiting_reason_is_cut_to_what_windows_shows() -> None:
    model = model_of(status("awaiting_policy", waiting_for="x" * 300))
    assert len(model.tooltip) == MAX_TOOLTIP
    assert model.tooltip.endswith("…")


@pytest.mark.parametrize(
    ("body", "stop", "start", "back_up_now", "sign_in"),
    [
        (status("unconfigured"), True, False, False, False),
        (status("awaiting_policy"), True, False, False, False),
        (status("awaiting_registration"), True, False, False, False),
        (status("awaiting_sign_in"), True, False, False, True),
        (status("backing_up"), True, False, True, False),
        (status("stopped"), False, True, False, False),
        (status("backing_up", daemon_running=False), False, False, False, False),
        (status("stopped", daemon_running=False), False, False, False, False),
        (status("awaiting_sign_in", daemon_running=False), False, False, False, False),
    ],
)
def test_only_the_items_that_can_work_are_enabled(
    body: dict[str, Any], stop: bool, start: bool, back_up_now: bool, sign_in: bool
) -> None:
    model = model_of(body)
    enabled = (model.can_stop, model.can_start, model.can_back_up_now, model.can_sign_in)
    assert enabled == (stop, start, back_up_now, sign_in)


@pytest.mark.parametrize(
    ("body", "state"),
    [
        (status("backing_up"), IconState.BACKING_UP),
        (status("awaiting_policy"), IconState.WAITING),
        (status("awaiting_sign_in"), IconState.WAITING),
        (status("awaiting_policy", last_error="cannot connect"), IconState.ERROR),
        (status("backing_up", last_error="disk full"), IconState.ERROR),
        (status("stopped", last_error="cannot connect"), IconState.STOPPED),
        (status("backing_up", daemon_running=False), IconState.STOPPED),
    ],
)
def test_the_icon_colour_follows_the_state(body: dict[str, Any], state: IconState) -> None:
    assert model_of(body).icon_state is state


def test_the_last_error_is_shown_while_the_agent_is_trying() -> None:
    assert model_of(status(last_error="cannot connect")).error_line == "Last error: cannot connect"
    assert model_of(status("stopped", last_error="cannot connect")).error_line is None


@pytest.mark.parametrize(
    ("action", "command"),
    [("stop", "stop"), ("start", "start"), ("back_up_now", "backup-now")],
)
@pytest.mark.parametrize(
    "error",
    [
        DaemonUnavailable("the agent is not running (no control socket at /run/holdfast)"),
        Refused("stop refused: nobody is not this device's user"),
        AgentError("backup-now is not available in this release of the agent"),
    ],
)
def test_a_failed_action_becomes_a_message_never_an_exception(
    action: str, command: str, error: AgentError
) -> None:
    recorder = Recorder()
    recorder.fail = error
    model = model_of(status("backing_up"), recorder)
    getattr(model, action)()
    assert recorder.commands == [command]
    assert model.last_message is not None
    assert model.last_message.endswith(error.message)
    assert recorder.notes == [model.last_message]
    assert recorder.reloads == 1  # the status is read again either way


def test_a_successful_action_clears_an_old_failure_and_reads_the_new_status() -> None:
    recorder = Recorder(after=status("stopped", stopped_by="alice at 2030-01-02T10:05:00+00:00"))
    model = model_of(status("backing_up"), recorder, last_message="Stop did not work: busy")
    model.stop()
    assert recorder.commands == ["stop"]
    assert model.last_message is None
    assert recorder.notes == []
    assert model.tooltip == "Holdfast: stopped by alice"
    assert model.can_start


def test_a_click_on_the_icon_starts_a_stopped_agent_and_never_stops_a_running_one() -> None:
    recorder = Recorder()
    model_of(status("stopped"), recorder).primary()
    assert recorder.commands == ["start"]

    recorder = Recorder()
    model = model_of(status("backing_up"), recorder)
    model.primary()
    assert recorder.commands == []
    assert recorder.notes == [model.status_line]


def test_a_click_on_the_icon_opens_the_sign_in_a_manual_policy_waits_for() -> None:
    opened: list[str] = []
    recorder = Recorder()
    model = model_of(
        status("awaiting_sign_in"), recorder, open_sign_in=lambda: opened.append("window")
    )
    model.primary()
    assert opened == ["window"]
    assert recorder.commands == []
    assert recorder.notes == []


def test_sign_in_opens_the_window_and_clears_an_old_failure() -> None:
    opened: list[str] = []
    recorder = Recorder()
    model = model_of(
        status("awaiting_sign_in"),
        recorder,
        open_sign_in=lambda: opened.append("window"),
        last_message="Stop did not work: busy",
    )
    model.sign_in()
    assert opened == ["window"]
    assert model.last_message is None
    assert recorder.notes == []
    assert recorder.commands == []  # the window signs in, not the tray


@pytest.mark.parametrize(
    ("launch", "why"),
    [
        (lambda: "tkinter is not installed", "tkinter is not installed"),
        (
            lambda: "no display name and no $DISPLAY environment variable",
            "no display name and no $DISPLAY environment variable",
        ),
    ],
)
def test_without_a_window_sign_in_points_to_holdfast_login(launch: Any, why: str) -> None:
    recorder = Recorder()
    model = model_of(status("awaiting_sign_in"), recorder, open_sign_in=launch)
    model.sign_in()
    assert model.last_message == (
        f"Could not open the sign-in window ({why}); run `holdfast login` in a terminal"
    )
    assert recorder.notes == [model.last_message]


def test_a_sign_in_window_that_cannot_be_started_is_a_message() -> None:
    def missing_python() -> str | None:
        raise FileNotFoundError(2, "No such file or directory", "/opt/holdfast/holdfast")

    recorder = Recorder()
    model = model_of(status("awaiting_sign_in"), recorder, open_sign_in=missing_python)
    model.sign_in()
    assert model.last_message is not None
    assert "(No such file or directory); run `holdfast login`" in model.last_message
    assert recorder.notes == [model.last_message]


def test_a_log_folder_that_cannot_be_opened_is_a_message() -> None:
    def missing_file_manager() -> None:
        raise FileNotFoundError(2, "No such file or directory", "xdg-open")

    recorder = Recorder()
    model = model_of(status(), recorder, open_folder=missing_file_manager)
    model.open_log_folder()
    assert model.last_message == "Could not open the log folder: No such file or directory"
    assert recorder.notes == [model.last_message]


class FakeChild:
    """A started process; `first` is what it prints first, `running` whether it stays up."""

    def __init__(self, argv: list[str], first: str = "", running: bool = False, **kw: Any) -> None:
        self.argv = argv
        self.kw = kw
        self.stdout = io.StringIO(first)
        self.running = running

    def poll(self) -> int | None:
        return None if self.running else 0

    def wait(self) -> int:
        return 0


@pytest.mark.parametrize(
    ("platform", "opener"), [("linux", "xdg-open"), ("darwin", "open"), ("win32", "explorer")]
)
def test_the_log_folder_opens_with_the_platforms_file_manager(platform: str, opener: str) -> None:
    started: list[list[str]] = []

    def popen(argv: list[str], **kw: Any) -> Any:
        started.append(argv)
        return FakeChild(argv, **kw)

    open_in_file_manager(Path("/var/log/holdfast"), platform=platform, popen=popen)
    assert started == [[opener, str(Path("/var/log/holdfast"))]]


@pytest.mark.parametrize("state", list(IconState))
@pytest.mark.parametrize("size", [16, 22, 64])
def test_each_state_draws_a_square_image_in_its_colour(state: IconState, size: int) -> None:
    image = draw(state, size)
    assert image.size == (size, size)
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0)) == (0, 0, 0, 0)  # transparent corners: a disc, not a tile
    # Just inside the disc's left edge, away from the white glyph.
    assert image.getpixel((size // 16 + max(1, size // 8), size // 2)) == (*COLOURS[state], 255)


def test_states_are_told_apart_by_more_than_colour() -> None:
    shapes = {
        state: draw(state).convert("L").point(lambda v: 255 if v > 250 else 0).tobytes()
        for state in IconState
    }
    assert len(set(shapes.values())) == len(IconState)


def fake_icon(*_args: Any) -> Any:
    raise AssertionError("no icon may be built")


def test_a_cloaked_device_shows_no_tray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = AgentPaths.under(tmp_path)
    paths.ensure()
    save_state(paths.state_file, State(phase=Phase.BACKING_UP, facts={"cloaked": True}))
    assert run(paths, icon_factory=fake_icon) == 0
    assert "hidden on this device (DEVICE_CLOAKED=true)" in capsys.readouterr().out


def without_pystray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget any pystray imported earlier in this process: the backend is chosen on import."""
    for name in [n for n in sys.modules if n == "pystray" or n.startswith("pystray.")]:
        monkeypatch.delitem(sys.modules, name)


def test_without_a_display_the_tray_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    without_pystray(monkeypatch)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("PYSTRAY_BACKEND", "xorg")
    assert run(AgentPaths.under(tmp_path), icon_factory=fake_icon) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"holdfast: {NO_DESKTOP}")
    assert err.count("\n") == 1
    assert "Traceback" not in err


# The sign-in window, as the tray starts it (agent.desktop).

TOKEN = "0fb12341-246b-448d-b07f-c6573ad5ad02"


class Windows:
    """A fake Popen for the sign-in window: each start prints `first`."""

    def __init__(self, first: str, running: bool = True) -> None:
        self.first = first
        self.running = running
        self.started: list[FakeChild] = []

    def __call__(self, argv: list[str], **kw: Any) -> Any:  # Any: it stands in for a Popen
        self.started.append(FakeChild(argv, self.first, self.running, **kw))
        return self.started[-1]


def agent_home(tmp_path: Path) -> AgentPaths:
    """An agent home whose installer arguments hold a token, as on a configured device."""
    paths = AgentPaths.under(tmp_path / "agent")
    paths.ensure()
    paths.deploy_properties.write_text(
        f"DEPLOYMENT_URL=https://127.0.0.1:9\nDEPLOYMENT_POLICY_TOKEN={TOKEN}\n"
    )
    return paths


@pytest.mark.parametrize(
    ("frozen", "start"),
    [
        (False, ["/usr/bin/python3", "-m", "agent.login_dialog"]),
        (True, ["/usr/bin/python3", "login-dialog"]),
    ],
)
def test_the_sign_in_window_is_this_program_with_the_agents_home_and_nothing_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frozen: bool, start: list[str]
) -> None:
    paths = agent_home(tmp_path)
    monkeypatch.setenv(ENV_HOME, "/somewhere/else")
    windows = Windows("ready\n")
    launch = LoginDialog(paths, popen=windows, frozen=frozen, executable="/usr/bin/python3")
    assert launch() is None
    [child] = windows.started
    assert child.argv == [*start, "--home", str(tmp_path / "agent")]
    env = child.kw["env"]
    assert ENV_HOME not in env  # --home says which agent, not an inherited variable
    assert not any(TOKEN in word or "password" in word.lower() for word in child.argv)
    assert not any(TOKEN in value for value in env.values())
    assert child.kw["stdin"] == subprocess.DEVNULL  # it reads nothing from the tray


def test_the_system_agent_needs_no_home() -> None:
    assert home_of(AgentPaths.system()) is None
    assert home_of(AgentPaths.under(Path("/opt/agent"))) == Path("/opt/agent").absolute()
    windows = Windows("ready\n")
    LoginDialog(AgentPaths.system(), popen=windows, frozen=False, executable="python")()
    assert windows.started[0].argv == ["python", "-m", "agent.login_dialog"]


def test_one_sign_in_window_at_a_time(tmp_path: Path) -> None:
    windows = Windows("ready\n")
    launch = LoginDialog(agent_home(tmp_path), popen=windows)
    assert launch() is None
    assert launch() is None
    assert len(windows.started) == 1
    windows.started[0].running = False  # closed: the next click opens a new one
    assert launch() is None
    assert len(windows.started) == 2


@pytest.mark.parametrize(
    ("first", "why"),
    [
        ("unavailable: tkinter is not installed\n", "tkinter is not installed"),
        (
            'unavailable: couldn\'t connect to display ":9"\n',
            'couldn\'t connect to display ":9"',
        ),
        ("", "the sign-in window ended at once; see the tray's output"),
    ],
)
def test_a_window_that_cannot_open_says_why(tmp_path: Path, first: str, why: str) -> None:
    windows = Windows(first, running=False)
    assert LoginDialog(agent_home(tmp_path), popen=windows)() == why


@pytest.mark.skipif(sys.platform != "linux", reason="DISPLAY is how Linux finds a desktop")
def test_the_real_window_without_a_display_answers_the_tray_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # `-m agent...` from the checkout
    why = LoginDialog(agent_home(tmp_path), start_seconds=60)()
    # Which one depends on this Python: Debian's has no tkinter without python3-tk.
    assert why in (
        "no display name and no $DISPLAY environment variable",
        "tkinter is not installed",
    )
