"""`holdfast tray`: the icon in the user's system tray, a thin face over the control channel.

`TrayModel` decides what the tray says and which items are enabled, from the status object
of `holdfast status`; its actions call the same control client as the CLI, so the daemon
decides everything (who may stop, what start resumes); Sign in… opens a window of its own
(agent.desktop). `run()` puts the model on screen with pystray and re-reads the status every
few seconds; the tray keeps no state of its own.

pystray chooses its backend when first imported and, on Linux without a display, fails in
that import (with Xlib's own error, not ImportError); so it is imported inside run() only.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from PIL import Image

from agent import logs
from agent.desktop import LoginDialog, open_in_file_manager
from agent.errors import AgentError
from agent.paths import AgentPaths
from agent.tray_icon import IconState, TrayIcon, X11Loop, draw

log = logging.getLogger(f"{logs.LOGGER}.tray")

APP_NAME = "holdfast"
# Windows keeps at most 128 characters of a tooltip, the terminating NUL included.
MAX_TOOLTIP = 127
NO_DESKTOP = "no graphical session: the tray needs a desktop"

Control = Callable[[str], dict[str, Any]]
ReadStatus = Callable[[], dict[str, Any]]
Notify = Callable[[str], None]
# Opens the sign-in window: None once it is up, else why no window can open here.
OpenSignIn = Callable[[], str | None]


def _clock(iso: str | None) -> str | None:
    """The local hour and minute of a status timestamp: retries are minutes to an hour away."""
    if not iso:
        return None
    return dt.datetime.fromisoformat(iso).astimezone().strftime("%H:%M")


def _ignore(_message: str) -> None:
    """Where notifications go on a backend that cannot show them (X11's plain tray)."""


@dataclass
class TrayModel:
    """What the tray shows and what its items do, from one status object; no GUI, no I/O.

    Every effect goes through the injected callables; errors from them become a sentence in
    `last_message` (and a notification), never an exception out of an action.
    """

    status: dict[str, Any]
    control: Control
    read_status: ReadStatus
    open_folder: Callable[[], None]
    open_sign_in: OpenSignIn
    notify: Notify = _ignore
    last_message: str | None = None

    @classmethod
    def for_agent(cls, paths: AgentPaths) -> TrayModel:
        """The model wired to the real agent: its status files and its control socket."""
        from agent.control import call
        from agent.status import collect

        return cls(
            status=collect(paths),
            control=lambda command: call(paths.run, command),
            read_status=lambda: collect(paths),
            open_folder=lambda: open_in_file_manager(paths.log),
            open_sign_in=LoginDialog(paths),
        )

    # What it shows

    @property
    def running(self) -> bool:
        return bool(self.status.get("daemon_running"))

    @property
    def stopped(self) -> bool:
        return self.status.get("phase") == "stopped"

    @property
    def hidden(self) -> bool:
        return bool(self.status.get("tray_hidden"))

    @property
    def can_stop(self) -> bool:
        return self.running and not self.stopped

    @property
    def can_start(self) -> bool:
        return self.running and self.stopped

    @property
    def can_back_up_now(self) -> bool:
        return self.running and self.status.get("phase") == "backing_up"

    @property
    def can_sign_in(self) -> bool:
        return self.running and self.status.get("phase") == "awaiting_sign_in"

    @property
    def summary(self) -> str:
        if not self.running:
            return "the agent is not running"
        phase = self.status.get("phase")
        if phase == "stopped":
            who, _, _when = (self.status.get("stopped_by") or "a user").partition(" at ")
            return f"stopped by {who}"
        if phase == "backing_up":
            if self.status.get("backup_running"):
                return "backing up now"
            last_backup = self.status.get("last_backup") or {}
            last = _clock(last_backup.get("finished_at")) or "none yet"
            return f"backing up — last backup {last}"
        waiting = f"waiting for {self.status.get('waiting_for') or phase}"
        next_attempt = _clock(self.status.get("next_attempt_at"))
        return f"{waiting} (next attempt {next_attempt})" if next_attempt else waiting

    @property
    def tooltip(self) -> str:
        text = f"Holdfast: {self.summary}"
        return text if len(text) <= MAX_TOOLTIP else text[: MAX_TOOLTIP - 1] + "…"

    @property
    def status_line(self) -> str:
        summary = self.summary
        return summary[:1].upper() + summary[1:]

    @property
    def error_line(self) -> str | None:
        """The last failure while it still matters: not once the user has stopped the agent."""
        error = self.status.get("last_error")
        return f"Last error: {error}" if error and self.running and not self.stopped else None

    @property
    def icon_state(self) -> IconState:
        if not self.running or self.stopped:
            return IconState.STOPPED
        if self.status.get("last_error"):
            return IconState.ERROR
        if self.status.get("phase") == "backing_up":
            return IconState.BACKING_UP
        return IconState.WAITING

    # What it does

    def reload(self) -> None:
        self.status = self.read_status()

    def stop(self) -> None:
        self._command("stop", "Stop")

    def start(self) -> None:
        self._command("start", "Start")

    def back_up_now(self) -> None:
        self._command("backup-now", "Back up now")

    def open_log_folder(self) -> None:
        try:
            self.open_folder()
        except OSError as exc:
            self.report(f"Could not open the log folder: {exc.strerror or exc}")

    def sign_in(self) -> None:
        try:
            why_not = self.open_sign_in()
        except OSError as exc:  # its program would not start
            why_not = exc.strerror or str(exc)
        if why_not is None:
            self.last_message = None
        else:
            self.report(
                f"Could not open the sign-in window ({why_not}); run `holdfast login` in a terminal"
            )

    def primary(self) -> None:
        """A click on the icon itself: resume a stopped agent, open a sign-in a manual policy
        waits for (the only way to it without a menu: X11's plain tray), else say where it stands.

        Never Stop: a stray click must not pause someone's backups.
        """
        if self.can_start:
            self.start()
        elif self.can_sign_in:
            self.sign_in()
        else:
            self.notify(self.status_line)

    def report(self, message: str) -> None:
        self.last_message = message
        self.notify(message)

    def _command(self, command: str, what: str) -> None:
        try:
            self.control(command)
        except AgentError as exc:  # DaemonUnavailable and Refused included: all say why
            self.report(f"{what} did not work: {exc.message}")
        else:
            self.last_message = None  # an earlier failure no longer describes the agent
        self.reload()


IconFactory = Callable[[str, Image.Image, str, Any], TrayIcon]


class _TrayView:
    """The model on screen: a pystray icon, its menu, and the poller that keeps both current."""

    def __init__(
        self,
        model: TrayModel,
        pystray: Any,
        icon_factory: IconFactory,
        stop: threading.Event,
        poll_seconds: float,
    ) -> None:
        self.model = model
        self.stop = stop
        self.poll_seconds = poll_seconds
        self.loop_ended = threading.Event()
        self._shown = model.icon_state
        item, menu = pystray.MenuItem, pystray.Menu
        # Texts and states are callables, read each time the backend draws the menu. The
        # backend calls the first item whose `default` is true when the icon itself is
        # clicked, the only action on backends without menus (X11's plain tray).
        self.menu = menu(
            item(
                lambda _: model.status_line,
                self._act(model.primary),
                default=lambda _: not model.can_start,
            ),
            item(
                lambda _: model.error_line or "",
                None,
                enabled=False,
                visible=lambda _: model.error_line is not None,
            ),
            item(
                lambda _: model.last_message or "",
                None,
                enabled=False,
                visible=lambda _: model.last_message is not None,
            ),
            menu.SEPARATOR,
            item("Sign in…", self._act(model.sign_in), enabled=lambda _: model.can_sign_in),
            item("Stop", self._act(model.stop), enabled=lambda _: model.can_stop),
            item(
                "Start",
                self._act(model.start),
                enabled=lambda _: model.can_start,
                default=lambda _: model.can_start,
            ),
            item(
                "Back up now", self._act(model.back_up_now), enabled=lambda _: model.can_back_up_now
            ),
            menu.SEPARATOR,
            item("Open log folder", self._act(model.open_log_folder)),
        )
        self.icon = icon_factory(APP_NAME, draw(self._shown), model.tooltip, self.menu)
        if getattr(self.icon, "HAS_NOTIFICATION", False):
            model.notify = self._notify
        self.x11 = X11Loop.attach(self.icon, self._on_x11_wake)

    def _notify(self, message: str) -> None:
        try:
            self.icon.notify(message, "Holdfast")
        except Exception:  # no notification service on this desktop: the menu still says it
            log.warning("tray: could not show a notification: %s", message, exc_info=True)

    def _act(self, action: Callable[[], None]) -> Callable[[Any, Any], None]:
        def activate(_icon: Any, _item: Any) -> None:
            # Runs on the backend's own loop: an exception would end that loop (X11's catches
            # everything and returns), so a bug here must cost one click, not the tray.
            try:
                action()
                self.show()
            except Exception:
                log.exception("tray: a menu action failed")
                self.model.report("Something went wrong; see the tray's output.")

        return activate

    def show(self) -> None:
        """Put the model's current status on the icon: title, picture, menu."""
        if self.model.hidden:
            self.stop.set()  # the device was cloaked since the tray started
            return
        if not self.icon.visible:
            self.icon.visible = True
        self.icon.title = self.model.tooltip
        state = self.model.icon_state
        if state is not self._shown:
            # Only on change: the X11 backend asks the tray host to dock it on every new image.
            self._shown = state
            self.icon.icon = draw(state)
        self.icon.update_menu()

    def _on_x11_wake(self) -> None:
        """On the X11 loop's thread, when the poller asks; nothing may escape into that loop."""
        try:
            if self.stop.is_set():
                self.icon.stop()
                return
            was_visible = self.icon.visible
            self.show()
            if was_visible and self.x11 is not None:
                self.x11.dock_again_if_loose()
        except Exception:
            log.exception("tray: could not update the icon")

    def _update(self) -> None:
        try:
            if self.x11 is not None:
                self.x11.wake()  # the X11 loop updates the icon in its own thread
            else:
                self.show()
        except Exception:  # one bad update must not freeze the icon for the session
            log.exception("tray: could not update the icon")

    def poll(self, _icon: TrayIcon) -> None:
        """pystray's setup callback: its own thread, started once the loop is up."""
        self._update()
        while not self.stop.wait(self.poll_seconds):
            try:
                self.model.reload()
            except Exception:
                log.exception("tray: could not read the status")
                continue
            self._update()
        # Stopping: the X11 loop stops itself when woken with `stop` set; others from here.
        if self.x11 is not None:
            self._update()
            self.x11.close()
        elif not self.loop_ended.is_set():
            self.icon.stop()


def run(
    paths: AgentPaths,
    *,
    icon_factory: IconFactory | None = None,
    poll_seconds: float = 3.0,
    stop_event: threading.Event | None = None,
) -> int:
    """Show the tray until `stop_event` is set; the exit code for `holdfast tray`.

    `icon_factory` builds the icon (default: pystray.Icon, whose backend pystray picks from
    the session or from PYSTRAY_BACKEND); it is called as (name, image, title, menu).
    """
    model = TrayModel.for_agent(paths)
    if model.hidden:
        print("Holdfast: the tray icon is hidden on this device (DEVICE_CLOAKED=true).")
        return 0
    try:
        import pystray  # type: ignore[import-untyped]
    except Exception as exc:  # Xlib raises its own errors when there is no display
        log.debug("tray: pystray cannot start", exc_info=True)
        print(f"holdfast: {NO_DESKTOP} ({exc})", file=sys.stderr)
        return 1
    stop = stop_event if stop_event is not None else threading.Event()
    view = _TrayView(model, pystray, icon_factory or pystray.Icon, stop, poll_seconds)
    try:
        view.icon.run(view.poll)
    finally:
        # The loop may also end by itself (the X server went away): let the poller finish.
        view.loop_ended.set()
        stop.set()
    return 0


def main(paths: AgentPaths) -> int:
    """`holdfast tray`: runs until the session ends or the process is told to stop."""
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()  # only a flag: the poller thread has the icon's loop stopped

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    return run(paths, stop_event=stop)


__all__ = ["NO_DESKTOP", "IconFactory", "OpenSignIn", "TrayModel", "main", "run"]
