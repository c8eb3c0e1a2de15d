"""What the tray starts on the user's desktop: their file manager, and the sign-in window.

pystray has no dialogs, so the sign-in window is a process of its own (agent.login_dialog,
on Tk). Its first line of output says whether it could open: `ready`, or `unavailable: WHY`
(no tkinter, no display); the tray then points the user to `holdfast login` instead of
leaving a click unanswered. Nothing secret crosses here: the password is typed into that
window and leaves it only in its request to the daemon.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from agent.frozen import is_frozen, original_environment
from agent.paths import ENV_HOME, AgentPaths

READY = "ready"
UNAVAILABLE = "unavailable: "
NO_WINDOW = 5  # the sign-in window's exit code when it could not open
# Tk opens in well under a second; a slower start is taken for a window on its way rather
# than holding the tray's loop, which waits for this line, any longer.
WINDOW_START_SECONDS = 5.0


def open_in_file_manager(
    folder: Path,
    *,
    platform: str = sys.platform,
    popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
) -> None:
    """Show `folder` in the desktop's file manager, without waiting for it."""
    if platform == "darwin":
        argv = ["open", str(folder)]
    elif platform == "win32":
        argv = ["explorer", str(folder)]
    else:
        argv = ["xdg-open", str(folder)]
    # The user's whole environment on purpose: the file manager needs their session
    # (DISPLAY, D-Bus address, XDG settings), and it runs as them, like the tray.
    child = popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=original_environment()
    )
    # Reaped in the background: no zombie, and no "still running" warning when dropped.
    threading.Thread(target=child.wait, name="file-manager", daemon=True).start()


def home_of(paths: AgentPaths) -> Path | None:
    """The `--home` that gives `paths`; None for the system's folders, the default.

    The tray's folders come from `--home`/HOLDFAST_HOME or the system (AgentPaths.resolve),
    so one of the two always gives them back.
    """
    home = paths.run.parent
    return home if paths != AgentPaths.system() and AgentPaths.under(home) == paths else None


def login_dialog_command(home: Path | None, *, frozen: bool, executable: str) -> list[str]:
    """How to start the sign-in window: this same program, so it reaches the same agent.

    Frozen (PyInstaller) there is no `-m`: the executable's hidden `login-dialog` command.
    """
    start = [executable, "login-dialog"] if frozen else [executable, "-m", "agent.login_dialog"]
    return start if home is None else [*start, "--home", str(home)]


def _watch(child: subprocess.Popen[str], first: queue.Queue[str]) -> None:
    """Hand on the window's first line, then reap it: no zombie, no pipe left to fill."""
    assert child.stdout is not None
    with child.stdout:
        first.put(child.stdout.readline())
        for _line in child.stdout:
            pass
    child.wait()


class LoginDialog:
    """The tray's "Sign in…": starts the sign-in window, one at a time.

    Called on the tray's loop: None once the window is up (or on its way), else why no window
    can open here, for the tray to say instead.
    """

    def __init__(
        self,
        paths: AgentPaths,
        *,
        popen: Callable[..., subprocess.Popen[str]] = subprocess.Popen,
        frozen: bool | None = None,
        executable: str = sys.executable,
        start_seconds: float = WINDOW_START_SECONDS,
    ) -> None:
        if frozen is None:
            frozen = is_frozen()
        self.argv = login_dialog_command(home_of(paths), frozen=frozen, executable=executable)
        self._popen = popen
        self._start_seconds = start_seconds
        self._child: subprocess.Popen[str] | None = None

    def __call__(self) -> str | None:
        if self._child is not None and self._child.poll() is None:
            return None  # already open: a second window would only race the first
        # The user's environment: the window needs their session (DISPLAY, XAUTHORITY,
        # WAYLAND_DISPLAY, locale). Not HOLDFAST_HOME: the command line says which agent.
        env = {k: v for k, v in original_environment().items() if k != ENV_HOME}
        child = self._popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, text=True
        )
        first: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=_watch, args=(child, first), name="sign-in-window", daemon=True
        ).start()
        try:
            line = first.get(timeout=self._start_seconds).strip()
        except queue.Empty:
            line = READY  # slow, not failed
        if line == READY:
            self._child = child
            return None
        if line.startswith(UNAVAILABLE):
            return line.removeprefix(UNAVAILABLE)
        return "the sign-in window ended at once; see the tray's output"


__all__ = [
    "NO_WINDOW",
    "READY",
    "UNAVAILABLE",
    "LoginDialog",
    "home_of",
    "login_dialog_command",
    "open_in_file_manager",
]
