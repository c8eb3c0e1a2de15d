"""The tray's sign-in window: what Sign in does, what it shows, and the real window on Xvfb."""

from __future__ import annotations

import gc
import importlib.util
import io
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agent.control import SIGN_IN_ANSWER_SECONDS, ControlServer, Peer
from agent.desktop import NO_WINDOW, LoginDialog
from agent.errors import AgentError, DaemonUnavailable, Refused, UsageError
from agent.lifecycle import Phase, State
from agent.login_dialog import SignInForm, SignInWindow, show
from agent.paths import AgentPaths
from agent.state import save_state
from tests.conftest import require_tool

if TYPE_CHECKING:
    import tkinter as tk

JDOE = "jdoe@example.com"
PASSWORD = "pa55word!"
WRONG = (
    "wrong username or password (4 more failed attempts lock sign-in as "
    "'jdoe@example.com' for 15 minutes)"
)
LOCKED = (
    "too many failed sign-ins as 'jdoe@example.com': sign-in is locked for 15 more minutes "
    "(until 10:20 UTC)"
)


class Daemon:
    """The control client's side of a sign-in, faked: records each request, then answers."""

    def __init__(self, *answers: dict[str, Any] | AgentError) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, dict[str, Any], float]] = []
        self.sent: list[dict[str, Any]] = []  # the request objects themselves, as sent

    def call(self, command: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.requests.append((command, dict(args), timeout))
        self.sent.append(args)
        answer = self.answers.pop(0)
        if isinstance(answer, AgentError):
            raise answer
        return answer


def test_sign_in_sends_the_username_and_password_once_and_forgets_the_password() -> None:
    daemon = Daemon({"phase": "backing_up", "username": JDOE})
    form = SignInForm(daemon.call, username=f" {JDOE} ", password=PASSWORD)
    assert form.submit()
    assert form.signed_in
    assert form.message == f"Signed in as {JDOE}."
    # As long as `holdfast login` waits: the daemon waits for the authority.
    assert daemon.requests == [
        ("sign-in", {"username": JDOE, "password": PASSWORD}, SIGN_IN_ANSWER_SECONDS + 10)
    ]
    assert form.password == ""
    assert daemon.sent == [{}]  # the request no longer holds it either
    assert PASSWORD not in repr(form)


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (AgentError(WRONG), WRONG[0].upper() + WRONG[1:] + "."),
        (Refused(LOCKED), LOCKED[0].upper() + LOCKED[1:] + "."),
        (
            Refused("an administrator must reset the password of 'jdoe@example.com'"),
            "An administrator must reset the password of 'jdoe@example.com'.",
        ),
        (
            Refused(
                "ann is not the user detected on this device (jdoe@example.com); that user, "
                "or an administrator, may sign in"
            ),
            "Ann is not the user detected on this device (jdoe@example.com); that user, "
            "or an administrator, may sign in.",
        ),
        (
            UsageError("this device does not need a sign-in (phase backing_up)"),
            "This device does not need a sign-in (phase backing_up).",
        ),
        (
            DaemonUnavailable("the agent is not running (no control socket at /run/holdfast)"),
            "The agent is not running (no control socket at /run/holdfast).",
        ),
    ],
)
def test_a_failed_sign_in_shows_the_authoritys_sentence_and_forgets_the_password(
    error: AgentError, shown: str
) -> None:
    daemon = Daemon(error)
    form = SignInForm(daemon.call, username=JDOE, password=PASSWORD)
    assert not form.submit()
    assert not form.signed_in
    assert form.message == shown
    assert form.password == ""
    assert daemon.sent == [{}]


def test_the_locked_sentence_keeps_its_time() -> None:
    form = SignInForm(Daemon(Refused(LOCKED)).call, username=JDOE, password=PASSWORD)
    form.submit()
    assert "locked for 15 more minutes (until 10:20 UTC)" in form.message


@pytest.mark.parametrize(("username", "password"), [("", PASSWORD), ("  ", PASSWORD), (JDOE, "")])
def test_nothing_is_sent_without_a_username_and_a_password(username: str, password: str) -> None:
    daemon = Daemon()
    form = SignInForm(daemon.call, username=username, password=password)
    assert not form.submit()
    assert daemon.requests == []
    assert form.message == "Enter your username and your password."
    assert form.password == ""


def test_the_form_reaches_the_agents_control_socket_with_the_detected_user(
    tmp_path: Path,
) -> None:
    paths = AgentPaths.under(tmp_path)
    paths.ensure()
    save_state(paths.state_file, State(phase=Phase.AWAITING_SIGN_IN, username=JDOE))
    received: list[tuple[str, dict[str, Any], int]] = []

    def handler(command: str, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        received.append((command, dict(args), peer.uid))
        if args["password"] != PASSWORD:
            raise AgentError(WRONG)
        return {"phase": "backing_up", "username": args["username"]}

    server = ControlServer(paths.run, handler)
    server.start()
    try:
        form = SignInForm.for_agent(paths)
        assert form.username == JDOE
        form.password = "not-it"
        assert not form.submit()
        assert form.message.startswith("Wrong username or password (4 more")
        form.password = PASSWORD
        assert form.submit()
    finally:
        server.close()
    assert received == [
        ("sign-in", {"username": JDOE, "password": "not-it"}, os.getuid()),
        ("sign-in", {"username": JDOE, "password": PASSWORD}, os.getuid()),
    ]


# The window's process: its first line tells the tray whether it opened (agent.desktop).


def test_without_tkinter_the_window_tells_the_tray_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tkinter", None)  # as Debian's Python without python3-tk
    out = io.StringIO()
    assert show(AgentPaths.under(tmp_path), out=out) == NO_WINDOW
    assert out.getvalue() == "unavailable: tkinter is not installed\n"


HAS_TKINTER = importlib.util.find_spec("tkinter") is not None
NO_TKINTER = "tkinter is not installed (Debian package python3-tk)"


@pytest.mark.skipif(sys.platform != "linux", reason="DISPLAY is how Linux finds a desktop")
def test_without_a_display_the_window_tells_the_tray_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool(HAS_TKINTER, NO_TKINTER)
    monkeypatch.delenv("DISPLAY", raising=False)
    out = io.StringIO()
    assert show(AgentPaths.under(tmp_path), out=out) == NO_WINDOW
    assert out.getvalue() == "unavailable: no display name and no $DISPLAY environment variable\n"


# The real window, on Xvfb.


@pytest.fixture
def display(tmp_path: Path) -> Iterator[str]:
    """A fresh Xvfb; yields its DISPLAY."""
    require_tool(HAS_TKINTER, NO_TKINTER)
    require_tool(bool(shutil.which("Xvfb")), "Xvfb is not installed (Debian package xvfb)")
    read, write = os.pipe()
    log = tmp_path / "xvfb.out"
    with log.open("wb") as out:
        # -displayfd: Xvfb picks a free display itself and writes its number once ready.
        xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
            pass_fds=(write,),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    os.close(write)
    try:
        number = b""
        deadline = time.monotonic() + 30
        while not number.endswith(b"\n"):
            ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read, 16) if ready else b""
            assert chunk, "Xvfb did not start: " + log.read_text()
            number += chunk
        yield f":{number.decode().strip()}"
    finally:
        os.close(read)
        xvfb.terminate()
        try:
            xvfb.wait(timeout=10)
        except subprocess.TimeoutExpired:
            xvfb.kill()
            xvfb.wait()


@pytest.fixture
def root(display: str) -> Iterator[tk.Tk]:
    """A Tk root window on the Xvfb display, in this process."""
    import tkinter as tk

    yield tk.Tk(screenName=display, className="holdfast")
    # Tk objects must die on the thread that made them: collect the test's reference cycles
    # (callbacks that name the window) here, before a background thread's collection would.
    gc.collect()


def test_the_window_stays_responsive_shows_a_wrong_password_and_closes_once_signed_in(
    root: tk.Tk,
) -> None:
    import tkinter as tk

    answer_now = threading.Event()
    requests: list[dict[str, Any]] = []

    def call(command: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        requests.append(dict(args))
        if len(requests) == 1:
            assert answer_now.wait(30), "the window never looked at itself while waiting"
            raise AgentError(WRONG)
        return {"phase": "backing_up", "username": args["username"]}

    form = SignInForm(call, username=JDOE)
    window = SignInWindow(root, form)
    seen: dict[str, Any] = {}
    timed_out: list[bool] = []

    def while_waiting() -> None:  # a Tk callback while the first answer is awaited
        seen["waiting"] = (window.message.get(), window.sign_in_button.instate(["disabled"]))
        answer_now.set()
        root.after(20, after_the_answer)

    def after_the_answer() -> None:
        if window.busy:
            root.after(20, after_the_answer)
            return
        seen["answered"] = (
            window.message.get(),
            window.password.get(),
            window.sign_in_button.instate(["!disabled"]),
        )
        window.password_entry.insert(0, PASSWORD)
        window.sign_in_button.invoke()

    def give_up() -> None:
        timed_out.append(True)
        root.destroy()

    assert window.username_entry.get() == JDOE  # the detected user, filled in
    window.password_entry.insert(0, "not-it")
    window.sign_in_button.invoke()
    assert window.password.get() == ""  # handed to the request, gone from the field
    root.after(20, while_waiting)
    root.after(30_000, give_up)
    root.mainloop()

    assert not timed_out, f"the window did not close; it said {seen}"
    assert seen["waiting"] == ("Signing in…", True)
    assert seen["answered"] == (WRONG[0].upper() + WRONG[1:] + ".", "", True)
    assert requests == [
        {"username": JDOE, "password": "not-it"},
        {"username": JDOE, "password": PASSWORD},
    ]
    assert form.signed_in
    assert form.password == ""
    with pytest.raises(tk.TclError):
        root.winfo_exists()  # closed


def test_the_tray_sees_the_real_window_open(
    display: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # `-m agent...` from the checkout
    children: list[subprocess.Popen[str]] = []

    def popen(argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        children.append(subprocess.Popen(argv, **kw))
        return children[-1]

    try:
        assert LoginDialog(AgentPaths.under(tmp_path), popen=popen, start_seconds=60)() is None
        [child] = children
        assert child.poll() is None  # on screen, waiting for the user
    finally:
        for child in children:
            child.terminate()
            child.wait(timeout=10)
