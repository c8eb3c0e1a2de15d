"""The agent as a PyInstaller executable: how it starts itself again, and other programs.

Installed from source, the agent is `python -m agent`; frozen (packaging/pyinstaller), it is
one executable, `sys.executable` itself, which takes no `-m`. The frozen executable's
bootloader also changes the environment: it puts its own library folder first in
LD_LIBRARY_PATH (the original value saved in LD_LIBRARY_PATH_ORIG) and sets `_PYI_*`
variables. A system program started with that environment (systemctl, loginctl, xdg-open)
would load the bundle's copies of libssl or libz instead of its own, and a second holdfast
would take itself for a child of this one: both get `original_environment()` instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

_LIBRARY_PATH = "LD_LIBRARY_PATH"
_SAVED_LIBRARY_PATH = "LD_LIBRARY_PATH_ORIG"
_BOOTLOADER_PREFIX = "_PYI_"


def is_frozen() -> bool:
    """Whether this agent is a PyInstaller executable rather than a Python package."""
    return bool(getattr(sys, "frozen", False))


def self_command() -> list[str]:
    """The start of a command line that runs this same `holdfast`, before its arguments."""
    if is_frozen():
        return [sys.executable]
    return [sys.executable, "-m", "agent"]


def original_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment as it was before the frozen executable's bootloader changed it.

    `environ` defaults to this process's. Not frozen, it is returned unchanged (a copy).
    """
    env = dict(os.environ if environ is None else environ)
    if not is_frozen():
        return env
    saved = env.pop(_SAVED_LIBRARY_PATH, None)
    if saved:
        env[_LIBRARY_PATH] = saved
    else:
        env.pop(_LIBRARY_PATH, None)
    return {name: value for name, value in env.items() if not name.startswith(_BOOTLOADER_PREFIX)}


__all__ = ["is_frozen", "original_environment", "self_command"]
