"""The tray's sign-in window: a username, a password, and the `sign-in` of `holdfast login`.

The tray starts it as a process of its own (agent.desktop), since pystray has no dialogs.
`SignInForm` is what the window does, without Tk; `SignInWindow` puts it on screen and keeps
the Tk loop free while the daemon waits for the authority. The password lives in the password
field's variable until Sign in, then in the form and its one request; all three are cleared
once it is sent. It is never logged, and never on a command line or in an environment.

Run as `python -m agent.login_dialog [--home DIR]`, or frozen as `holdfast login-dialog`.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from agent.control import SIGN_IN_ANSWER_SECONDS
from agent.desktop import NO_WINDOW, READY, UNAVAILABLE
from agent.errors import AgentError
from agent.paths import AgentPaths

if TYPE_CHECKING:
    import tkinter as tk

# As long as `holdfast login` waits: the daemon waits for the authority, and through it
# for an LDAP directory.
ANSWER_TIMEOUT = SIGN_IN_ANSWER_SECONDS + 10
POLL_MS = 50
TITLE = "Holdfast: sign in"

Call = Callable[[str, dict[str, Any], float], dict[str, Any]]


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


@dataclass
class SignInForm:
    """What the sign-in window does, without the window.

    `call` is the control client, as (command, args, timeout): control.call on the agent's
    run folder. `message` is the sentence the window shows under the fields.
    """

    call: Call
    username: str = ""
    password: str = field(default="", repr=False)
    message: str = ""
    signed_in: bool = False

    @classmethod
    def for_agent(cls, paths: AgentPaths) -> SignInForm:
        """The form wired to the agent: its control socket, and the user detection found."""
        from agent.control import call
        from agent.status import collect

        return cls(
            lambda command, args, timeout: call(paths.run, command, args, timeout),
            username=collect(paths).get("username") or "",
        )

    def submit(self) -> bool:
        """Ask the daemon to sign in; True once it has.

        The password is gone afterwards whatever the answer: a wrong one is typed again, a
        right one is not needed again.
        """
        username, password = self.username.strip(), self.password
        self.password = ""
        if not username or not password:
            self.message = "Enter your username and your password."
            return False
        request = {"username": username, "password": password}
        del password
        try:
            result = self.call("sign-in", request, ANSWER_TIMEOUT)
        except AgentError as exc:  # wrong password, locked, refused, no agent: each says why
            self.message = _sentence(exc.message)
            return False
        finally:
            request.clear()
        self.signed_in = True
        self.message = f"Signed in as {result.get('username') or username}."
        return True


def _work(form: SignInForm, done: queue.Queue[bool]) -> None:
    """The worker thread: only the form, never a Tk object (Tk belongs to its own thread)."""
    try:
        form.submit()
    except Exception:  # a bug must not leave the window saying "Signing in…" for ever
        form.password = ""
        form.message = "Something went wrong; run `holdfast login` in a terminal."
    done.put(form.signed_in)


class SignInWindow:
    """The form on screen: fields, Sign in and Cancel, and the daemon's answer."""

    def __init__(self, root: tk.Tk, form: SignInForm) -> None:
        import tkinter as tk
        from tkinter import ttk

        self.root = root
        self.form = form
        self.busy = False
        self._done: queue.Queue[bool] = queue.Queue()
        root.title(TITLE)
        root.resizable(False, False)
        frame = ttk.Frame(root, padding=12)
        frame.grid(sticky="nsew")
        ttk.Label(frame, text="Sign in to back up this device.").grid(
            row=0, column=0, columnspan=2, sticky="w", pady=(0, 8)
        )
        self.username = tk.StringVar(root, value=form.username)
        self.password = tk.StringVar(root, value="")
        self.message = tk.StringVar(root, value=form.message)
        ttk.Label(frame, text="Username").grid(row=1, column=0, sticky="w", padx=(0, 8))
        self.username_entry = ttk.Entry(frame, textvariable=self.username, width=34)
        self.username_entry.grid(row=1, column=1, sticky="ew")
        ttk.Label(frame, text="Password").grid(row=2, column=0, sticky="w", padx=(0, 8))
        self.password_entry = ttk.Entry(frame, textvariable=self.password, show="•", width=34)
        self.password_entry.grid(row=2, column=1, sticky="ew", pady=4)
        ttk.Label(frame, textvariable=self.message, wraplength=360, justify="left").grid(
            row=3, column=0, columnspan=2, sticky="w", pady=(4, 8)
        )
        buttons = ttk.Frame(frame)
        buttons.grid(row=4, column=0, columnspan=2, sticky="e")
        self.cancel_button = ttk.Button(buttons, text="Cancel", command=self.cancel)
        self.cancel_button.grid(row=0, column=0, padx=(0, 8))
        self.sign_in_button = ttk.Button(
            buttons, text="Sign in", command=self.submit, default="active"
        )
        self.sign_in_button.grid(row=0, column=1)
        root.bind("<Return>", lambda _event: self.submit())
        root.bind("<Escape>", lambda _event: self.cancel())
        root.protocol("WM_DELETE_WINDOW", self.cancel)
        (self.password_entry if form.username else self.username_entry).focus_set()

    def submit(self) -> None:
        if self.busy:
            return
        self.form.username = self.username.get()
        self.form.password = self.password.get()
        self.password.set("")  # from here on, only in the form, then in its request
        self.busy = True
        self._enable(False)
        self.message.set("Signing in…")
        threading.Thread(
            target=_work, args=(self.form, self._done), name="sign-in", daemon=True
        ).start()
        self.root.after(POLL_MS, self._answered)

    def cancel(self) -> None:
        """Close; a sign-in already sent still completes in the daemon."""
        self.password.set("")
        self.root.destroy()

    def _answered(self) -> None:
        try:
            signed_in = self._done.get_nowait()
        except queue.Empty:
            self.root.after(POLL_MS, self._answered)
            return
        self.busy = False
        if signed_in:
            self.root.destroy()  # the tray's icon and menu say the rest
            return
        self.message.set(self.form.message)
        self._enable(True)
        self.password_entry.focus_set()

    def _enable(self, enabled: bool) -> None:
        state = "!disabled" if enabled else "disabled"
        for widget in (self.username_entry, self.password_entry, self.sign_in_button):
            widget.state([state])


def _unavailable(out: TextIO, reason: str) -> int:
    print(f"{UNAVAILABLE}{reason}", file=out, flush=True)
    return NO_WINDOW


def show(paths: AgentPaths, *, out: TextIO | None = None) -> int:
    """The sign-in window until it closes: 0 signed in, 1 closed without, NO_WINDOW none.

    Its first line on `out` tells the tray whether it opened (agent.desktop).
    """
    out = out or sys.stdout
    try:
        import tkinter as tk
    except ImportError:  # Debian ships it apart from Python (python3-tk)
        return _unavailable(out, "tkinter is not installed")
    form = SignInForm.for_agent(paths)
    try:
        root = tk.Tk(className="holdfast")
    except tk.TclError as exc:  # no display, or one that will not have us
        return _unavailable(out, str(exc))
    SignInWindow(root, form)
    print(READY, file=out, flush=True)
    root.mainloop()
    return 0 if form.signed_in else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agent.login_dialog`: what the tray starts when not frozen."""
    parser = argparse.ArgumentParser(prog="python -m agent.login_dialog", description=TITLE)
    parser.add_argument("--home", metavar="DIR", help="the agent's home, as for `holdfast`")
    args = parser.parse_args(argv)
    return show(AgentPaths.resolve(args.home))


__all__ = ["ANSWER_TIMEOUT", "SignInForm", "SignInWindow", "main", "show"]

if __name__ == "__main__":
    raise SystemExit(main())
