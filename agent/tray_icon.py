"""The tray's icon: its picture, and what pystray's plain X11 backend needs to be dependable.

The picture is one coloured disc per state, drawn with Pillow (no image files to ship): green
working, amber waiting, grey stopped, red failing, with a small glyph for users who cannot
tell the colours apart.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from PIL import Image, ImageDraw


class IconState(StrEnum):
    BACKING_UP = "backing_up"
    WAITING = "waiting"
    STOPPED = "stopped"
    ERROR = "error"


COLOURS: dict[IconState, tuple[int, int, int]] = {
    IconState.BACKING_UP: (46, 160, 67),
    IconState.WAITING: (230, 162, 23),
    IconState.STOPPED: (128, 128, 128),
    IconState.ERROR: (207, 34, 46),
}

WHITE = (255, 255, 255, 255)


def draw(state: IconState, size: int = 64) -> Image.Image:
    """A square RGBA image of `size` pixels; backends scale it to what the tray host wants."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)
    margin = max(1, size // 16)
    pen.ellipse((margin, margin, size - 1 - margin, size - 1 - margin), fill=(*COLOURS[state], 255))
    unit = size / 16
    centre = size / 2
    if state is IconState.STOPPED:  # a pause sign: two bars
        for left in (5.0, 9.0):
            pen.rectangle((left * unit, 4.5 * unit, (left + 2) * unit, 11.5 * unit), fill=WHITE)
    elif state is IconState.ERROR:  # an exclamation mark
        pen.rectangle((centre - unit, 3.5 * unit, centre + unit, 9.5 * unit), fill=WHITE)
        pen.rectangle((centre - unit, 10.5 * unit, centre + unit, 12.5 * unit), fill=WHITE)
    elif state is IconState.WAITING:  # an hourglass: two triangles
        pen.polygon([(5 * unit, 4 * unit), (11 * unit, 4 * unit), (centre, centre)], fill=WHITE)
        pen.polygon([(5 * unit, 12 * unit), (11 * unit, 12 * unit), (centre, centre)], fill=WHITE)
    else:  # backing up: a check mark
        pen.line(
            [(4.5 * unit, 8.5 * unit), (7 * unit, 11 * unit), (11.5 * unit, 5 * unit)],
            fill=WHITE,
            width=max(1, round(2 * unit)),
        )
    return image


class TrayIcon(Protocol):
    """The part of pystray.Icon the tray uses (pystray ships no type hints)."""

    title: str
    icon: Image.Image
    visible: bool
    HAS_NOTIFICATION: bool

    def run(self, setup: Callable[[Any], None] | None = None) -> None: ...
    def stop(self) -> None: ...
    def update_menu(self) -> None: ...
    def notify(self, message: str, title: str | None = None) -> None: ...


class X11Loop:
    """Runs the tray's updates inside pystray's X11 loop, woken from the poller thread.

    pystray 0.19.5's X11 backend (the one a plain X11 tray such as trayer gets) has two faults
    this works around, through its private `_window`, `_display` and `_message_handlers`:
    - it never asks X for ButtonPress on its window (pystray#151), so clicks never arrive;
    - a property set from another thread shares the loop's X connection between two threads,
      and python-xlib's locking then deadlocks now and then under load (seen in tests: the
      icon never docked, or the loop never ended).
    So the poller thread never touches pystray's connection: it sends a wake-up message to
    the icon's window over its own connection, and the loop thread does the work on it.
    """

    WAKE_ATOM = "_HOLDFAST_TRAY_WAKE"

    def __init__(self, icon: Any, on_wake: Callable[[], None]) -> None:
        from Xlib import X  # type: ignore[import-untyped]
        from Xlib.display import Display  # type: ignore[import-untyped]

        self._icon = icon
        self._window = icon._window
        self._window.change_attributes(
            event_mask=X.ExposureMask | X.StructureNotifyMask | X.ButtonPressMask
        )
        self._root = icon._display.screen().root
        self._atom = icon._display.intern_atom(self.WAKE_ATOM)
        pystrays_handler = icon._message_handlers[X.ClientMessage]

        def on_client_message(event: Any) -> None:
            if event.client_type == self._atom:
                on_wake()
            else:
                pystrays_handler(event)

        icon._message_handlers[X.ClientMessage] = on_client_message
        self._waker = Display(icon._display.get_display_name())

    @classmethod
    def attach(cls, icon: Any, on_wake: Callable[[], None]) -> X11Loop | None:
        """The loop of `icon` if it is pystray's X11 one, else None (other backends are fine)."""
        private = ("_window", "_display", "_message_handlers")
        if type(icon).__module__ != "pystray._xorg" or not all(hasattr(icon, a) for a in private):
            return None  # another pystray: it may have fixed these; at worst clicks do nothing
        return cls(icon, on_wake)

    def wake(self) -> None:
        """From the poller thread: have the loop thread call `on_wake` (never waits for it)."""
        from Xlib import X
        from Xlib.protocol.event import ClientMessage  # type: ignore[import-untyped]

        window = self._waker.create_resource_object("window", self._window.id)
        message = ClientMessage(window=window, client_type=self._atom, data=(32, [0] * 5))
        # No event mask: X delivers it to the window's creator, pystray's loop.
        window.send_event(message, event_mask=X.NoEventMask)
        # sync, not flush: python-xlib's flush can return with the request still unsent
        # (seen in tests: the last wake-up before closing never arrived).
        self._waker.sync()

    def dock_again_if_loose(self) -> None:
        """From the loop thread: ask for a place in the tray again if the icon has none.

        pystray asks once; a tray host that was not ready yet (at login, or restarted) never
        embeds the icon. Setting the image again makes pystray ask again.
        """
        if self._window.query_tree().parent.id == self._root.id:
            self._icon.icon = self._icon.icon

    def close(self) -> None:
        self._waker.close()


__all__ = ["COLOURS", "IconState", "TrayIcon", "X11Loop", "draw"]
