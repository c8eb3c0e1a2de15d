"""`holdfast login`: manual registration, the user's password handed to the daemon in memory.

The password is read from the terminal without echo (getpass), or as the first line of stdin
when stdin is not a terminal (a script, a test); it goes to the daemon over the local control
channel and from there to the authority, and is never written anywhere.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from typing import TextIO

from agent.control import SIGN_IN_ANSWER_SECONDS, call
from agent.errors import DaemonUnavailable, UsageError
from agent.paths import AgentPaths
from agent.status import collect

Prompt = Callable[[str], str]


def read_credentials(
    username: str | None,
    detected: str | None,
    *,
    stdin: TextIO,
    ask: Prompt = input,
    ask_secret: Prompt = getpass.getpass,
) -> tuple[str, str]:
    """The username (given, typed, or the detected one) and the password."""
    if stdin.isatty():
        suggestion = f" [{detected}]" if detected and not username else ""
        name = username or ask(f"Username{suggestion}: ").strip() or detected
        if not name:
            raise UsageError("no username given")
        password = ask_secret(f"Password for {name}: ")
    else:
        name = username or detected
        if not name:
            raise UsageError("no username: give --username NAME")
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError(
            "no password given (stdin that is not a terminal gives it as its first line)"
        )
    return name, password


def login(paths: AgentPaths, username: str | None, stdin: TextIO | None = None) -> int:
    status = collect(paths)
    # Asked before the password, so nobody types a password for nothing.
    if not status["daemon_running"]:
        raise DaemonUnavailable("the agent is not running; start its service, then sign in")
    if status["phase"] != "awaiting_sign_in":
        raise UsageError(f"this device does not need a sign-in (phase {status['phase']})")
    name, password = read_credentials(username, status["username"], stdin=stdin or sys.stdin)
    result = call(
        paths.run,
        "sign-in",
        {"username": name, "password": password},
        timeout=SIGN_IN_ANSWER_SECONDS + 10,
    )
    print(f"Signed in as {result.get('username')}; the agent is in phase {result.get('phase')}.")
    return 0


__all__ = ["login", "read_credentials"]
