"""The tray against a real daemon: its model, pystray's machinery, and a real X11 tray host."""

from __future__ import annotations

import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.control import call
from agent.errors import DaemonUnavailable
from agent.paths import AgentPaths
from agent.tray import TrayModel, run
from tests.conftest import require_tool
from tests.integration.agent_process import Agent

UNREACHABLE = "DEPLOYMENT_URL=https://127.0.0.1:9&DEPLOYMENT_POLICY_TOKEN=0fb12341-246b-448d-b07f-c6573ad5ad02"
ME = pwd.getpwuid(os.getuid()).pw_name
REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@pytest.fixture
def agent() -> Iterator[Agent]:
    # Not under pytest's tmp_path (mode 0700): the tray runs as the desktop's user, who must
    # reach run/control.sock and read state/, as they reach /run/holdfast on a real device.
    home = Path(tempfile.mkdtemp(prefix="holdfast-tray-"))
    home.chmod(0o755)
    running = Agent(home=home / "agent")
    running.configure()
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(home, ignore_errors=True)


def paths_of(agent: Agent) -> AgentPaths:
    return AgentPaths.under(agent.home)


def wait_until(probe: Callable[[], T | None], what: str, timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_control(agent: Agent) -> None:
    """The pid file and the state come before the control socket: wait for it to answer."""

    def answers() -> bool:
        try:
            call(agent.home / "run", "status", timeout=5)
        except DaemonUnavailable:
            return False
        return True

    wait_until(answers, "the control socket to answer")


def test_the_menus_stop_and_start_reach_a_real_daemon(agent: Agent) -> None:
    agent.start("--deploy-args", UNREACHABLE)
    agent.wait_phase("awaiting_policy")
    wait_for_control(agent)
    notes: list[str] = []
    model = TrayModel.for_agent(paths_of(agent))
    model.notify = notes.append
    assert model.tooltip.startswith("Holdfast: waiting for the deployment policy")
    assert model.can_stop
    assert not model.can_start

    model.stop()  # AWAITING_POLICY -> STOPPED
    assert agent.wait_phase("stopped")["stopped_by"].startswith(f"{ME} at ")
    assert model.tooltip == f"Holdfast: stopped by {ME}"  # the daemon answers once it is done
    assert model.can_start
    assert not model.can_stop

    model.start()  # STOPPED -> AWAITING_POLICY
    agent.wait_phase("awaiting_policy")
    assert model.status["phase"] == "awaiting_policy"
    assert notes == []
    assert model.last_message is None

    assert agent.stop() == 0
    model.stop()
    assert model.tooltip == "Holdfast: the agent is not running"
    assert model.last_message is not None
    assert model.last_message.startswith("Stop did not work: the agent is not running")
    assert notes == [model.last_message]


def without_pystray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget any pystray imported earlier in this process: the backend is chosen on import."""
    for name in [n for n in sys.modules if n == "pystray" or n.startswith("pystray.")]:
        monkeypatch.delitem(sys.modules, name)


def test_the_icon_follows_the_daemon_through_pystrays_own_machinery(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_pystray(monkeypatch)
    monkeypatch.setenv("PYSTRAY_BACKEND", "dummy")
    import pystray  # type: ignore[import-untyped]

    assert pystray.Icon.__module__ == "pystray._base"  # what the dummy backend offers

    class LoopIcon(pystray.Icon):  # type: ignore[misc]
        """The dummy backend's Icon is pystray's abstract base, with no loop: this is the
        smallest one (ready, then wait to be stopped), everything else is pystray's."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.ended = threading.Event()
            self.notifications: list[str] = []
            self.images = 0

        def _run(self) -> None:
            self._mark_ready()
            self.ended.wait(120)

        def _stop(self) -> None:
            self.ended.set()

        def _show(self) -> None:
            pass

        def _hide(self) -> None:
            pass

        def _update_icon(self) -> None:
            self.images += 1
            self._icon_valid = True

        def _update_title(self) -> None:
            pass

        def _update_menu(self) -> None:
            pass

        def _notify(self, message: str, title: str | None = None) -> None:
            self.notifications.append(message)

    icons: list[LoopIcon] = []

    def factory(*args: Any) -> LoopIcon:
        icons.append(LoopIcon(*args))
        return icons[-1]

    agent.start("--deploy-args", UNREACHABLE)
    agent.wait_phase("awaiting_policy")
    wait_for_control(agent)
    stop = threading.Event()
    codes: list[int] = []
    loop = threading.Thread(
        target=lambda: codes.append(
            run(paths_of(agent), icon_factory=factory, poll_seconds=0.1, stop_event=stop)
        )
    )
    loop.start()
    try:
        icon = wait_until(lambda: icons and icons[0].visible and icons[0], "the icon to show")
        assert icon.title.startswith("Holdfast: waiting for the deployment policy")
        images = icon.images

        call(agent.home / "run", "stop")  # as another client would, behind the tray's back
        wait_until(lambda: icon.title == f"Holdfast: stopped by {ME}", "the title to say stopped")
        assert icon.images > images  # grey now, not red
        items = {item.text: item for item in icon.menu}
        assert items["Start"].enabled
        assert not items["Stop"].enabled
        assert not items["Back up now"].enabled
        assert not items["Sign in…"].enabled  # only a manual policy's sign-in waits for it

        icon()  # what a backend does when the icon is clicked: the default item, Start
        agent.wait_phase("awaiting_policy")
        wait_until(lambda: "waiting for" in icon.title, "the title to follow the start")

        assert agent.stop() == 0
        wait_until(lambda: "not running" in icon.title, "the title to say not running")
        icon()  # nothing to start: the click tells the status, through pystray's notify
        assert icon.notifications == ["The agent is not running"]
    finally:
        stop.set()
        loop.join(timeout=30)
    assert not loop.is_alive()
    assert codes == [0]
    assert icons[0].ended.is_set()


# The real X11 backend, docked in trayer on Xvfb, clicked through XTest.

XVFB_OPTIONS = ("-screen", "0", "800x600x24", "-nolisten", "tcp")
TRAY_CLASS = ("holdfastSystemTrayIcon", "holdfast")  # pystray's xorg WM_CLASS for "holdfast"


@pytest.fixture
def x_server(tmp_path: Path) -> Iterator[str]:
    """A fresh Xvfb with trayer owning its system tray; yields the DISPLAY."""
    require_tool(
        bool(shutil.which("Xvfb") and shutil.which("trayer")),
        "Xvfb and trayer are not installed (Debian packages xvfb, trayer)",
    )
    children: list[subprocess.Popen[bytes]] = []
    read, write = os.pipe()
    try:
        with (tmp_path / "xvfb.out").open("wb") as out:
            # -displayfd: Xvfb picks a free display itself and writes its number once ready.
            children.append(
                subprocess.Popen(
                    ["Xvfb", "-displayfd", str(write), *XVFB_OPTIONS],
                    pass_fds=(write,),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        os.close(write)
        number = b""
        deadline = time.monotonic() + 30
        while not number.endswith(b"\n"):
            ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read, 16) if ready else b""
            assert chunk, "Xvfb did not start: " + (tmp_path / "xvfb.out").read_text()
            number += chunk
        display = f":{number.decode().strip()}"
        with (tmp_path / "trayer.out").open("wb") as out:
            children.append(
                subprocess.Popen(
                    ["trayer"],
                    env={**os.environ, "DISPLAY": display},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        with XSession(display) as x:
            wait_until(x.tray_owner, "trayer to own the system tray")
        yield display
    finally:
        os.close(read)
        for child in reversed(children):
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


class XSession:
    """What the test sees of the X server, through python-xlib (installed with pystray)."""

    def __init__(self, display: str) -> None:
        import Xlib.display  # type: ignore[import-untyped]

        self.display = Xlib.display.Display(display)
        self.root = self.display.screen().root

    def __enter__(self) -> XSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.display.close()

    def tray_owner(self) -> int:
        owner = self.display.get_selection_owner(self.display.intern_atom("_NET_SYSTEM_TRAY_S0"))
        return int(getattr(owner, "id", 0))

    def _windows(self, window: Any) -> Iterator[Any]:
        yield window
        for child in window.query_tree().children:
            yield from self._windows(child)

    def docked_icon(self) -> Any:
        """The tray's window, mapped inside trayer's panel, or None."""
        from Xlib import X
        from Xlib.error import XError  # type: ignore[import-untyped]

        try:
            for window in self._windows(self.root):
                if window.get_wm_class() != TRAY_CLASS:
                    continue
                if window.get_attributes().map_state != X.IsViewable:
                    continue
                if "trayer" in self.ancestor_classes(window):
                    return window
        except XError:
            pass  # a window went away while we looked: look again
        return None

    def ancestor_classes(self, window: Any) -> set[str]:
        classes: set[str] = set()
        parent = window.query_tree().parent
        while parent.id != self.root.id:
            classes.update(parent.get_wm_class() or ())
            parent = parent.query_tree().parent
        return classes

    def describe(self) -> str:
        """The window tree, for a failure message."""
        from Xlib.error import XError

        lines = []
        try:
            for window in self._windows(self.root):
                size = window.get_geometry()
                where = self.root.translate_coords(window, 0, 0)
                parent = getattr(window.query_tree().parent, "id", 0)  # the root's is 0
                lines.append(
                    f"{window.id:#x} in {parent:#x}: "
                    f"{window.get_wm_class()} {window.get_wm_name()!r} at {where.x},{where.y} "
                    f"{size.width}x{size.height} map_state={window.get_attributes().map_state}"
                )
        except XError as exc:
            lines.append(f"(the tree changed while being read: {exc})")
        return "\n".join(lines)

    def click(self, window: Any) -> None:
        """A left click in the middle of `window`, as the user's mouse would make it."""
        from Xlib import X
        from Xlib.ext import xtest  # type: ignore[import-untyped]

        size = window.get_geometry()
        where = self.root.translate_coords(window, size.width // 2, size.height // 2)
        xtest.fake_input(self.display, X.MotionNotify, x=where.x, y=where.y)
        xtest.fake_input(self.display, X.ButtonPress, 1)
        xtest.fake_input(self.display, X.ButtonRelease, 1)
        self.display.sync()


def test_the_icon_docks_in_a_real_tray_and_a_click_starts_a_stopped_agent(
    agent: Agent, x_server: str, tmp_path: Path
) -> None:
    agent.start("--deploy-args", UNREACHABLE)
    agent.wait_phase("awaiting_policy")
    wait_for_control(agent)
    call(agent.home / "run", "stop")
    agent.wait_phase("stopped")
    code = (
        "import sys, faulthandler, signal\n"
        "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
        "from pathlib import Path\n"
        "from agent.paths import AgentPaths\n"
        "from agent.tray import main\n"
        "sys.exit(main(AgentPaths.under(Path(sys.argv[1]))))\n"
    )
    output = tmp_path / "tray.out"
    with output.open("wb") as out:
        tray = subprocess.Popen(
            [sys.executable, "-c", code, str(agent.home)],
            env={**os.environ, "DISPLAY": x_server, "PYSTRAY_BACKEND": "xorg"},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    with XSession(x_server) as x:
        try:
            icon = wait_until(x.docked_icon, "the icon to dock in trayer")
            geometry = icon.get_geometry()
            assert geometry.width > 1
            assert geometry.height > 1
            assert icon.get_wm_name() == f"Holdfast: stopped by {ME}"

            x.click(icon)  # the default action of a stopped agent: Start
            status = agent.wait_for(
                lambda s: s["phase"] != "stopped", what="the click to start the agent"
            )
            assert status["phase"] == "awaiting_policy"
            wait_until(lambda: "waiting for" in (icon.get_wm_name() or ""), "the title to follow")

            tray.send_signal(signal.SIGTERM)
            try:
                tray.wait(timeout=30)
            except subprocess.TimeoutExpired:
                tray.send_signal(signal.SIGUSR1)  # its threads' stacks into its output
                wait_until(lambda: "Current thread" in output.read_text(), "a stack dump", 10)
                raise AssertionError("the tray did not end on SIGTERM") from None
            assert tray.returncode == 0
            assert "Traceback" not in output.read_text()
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- tray ---\n{output.read_text()}\n--- X windows ---\n{x.describe()}"
            ) from None
        finally:
            if tray.poll() is None:
                tray.kill()
                tray.wait()
