"""The Linux service: a systemd unit in /etc/systemd/system and an XDG autostart for the tray.

/etc, not /usr/lib: `holdfast install` is the administrator's own act, and a distribution
package that ships the unit under /usr/lib/systemd/system is not overwritten by it.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.deploy_args import DeployArgs
from agent.paths import AgentPaths
from agent.service import (
    Backend,
    Command,
    Target,
    forget_folders,
    posix_executable_problem,
    remove_file,
    save_deploy_args,
    unit_template,
    write_unit,
)

UNIT = "holdfast-agent.service"
AUTOSTART = "holdfast-tray.desktop"
DEFAULT_EXECUTABLE = "/usr/bin/holdfast"
_UNIT_FOLDER = "/etc/systemd/system"
_EXEC_START = re.compile(r"^ExecStart=.*$", re.MULTILINE)
_EXEC = re.compile(r"^Exec=.*$", re.MULTILINE)
# The Desktop Entry specification's reserved characters (those a path may still hold here):
# an argument with one of them must be quoted.
_DESKTOP_RESERVED = re.compile(r"[\s<>~|&;*?#()]")


def layout(target: Target) -> AgentPaths:
    """The agent's folders (CONTRACT.md section 4) under the target's root."""
    return AgentPaths(
        conf=target.path("/etc/holdfast"),
        state=target.path("/var/lib/holdfast"),
        log=target.path("/var/log/holdfast"),
        run=target.path("/run/holdfast"),
    )


def unit_path(target: Target) -> Path:
    return target.path(_UNIT_FOLDER) / UNIT


def autostart_path(target: Target) -> Path:
    return target.path("/etc/xdg/autostart") / AUTOSTART


def render_unit(executable: str | None) -> str:
    """The unit, its ExecStart naming `executable` (already checked) when given."""
    text = unit_template(UNIT)
    if executable is None:
        return text
    # systemd: quotes around a path with spaces, and % doubled (it starts a specifier).
    word = executable.replace("%", "%%")
    if any(c.isspace() for c in word):
        word = f'"{word}"'
    return _EXEC_START.sub(lambda _: f"ExecStart={word} run", text, count=1)


def render_autostart(executable: str | None) -> str:
    """The tray's desktop entry, its Exec naming `executable` (already checked) when given."""
    text = unit_template(AUTOSTART)
    if executable is None:
        return text
    # The Desktop Entry specification: quotes around an argument with a reserved character
    # (quotes, '$', '`' and backslashes are refused earlier), and % doubled (a field code).
    word = executable.replace("%", "%%")
    if _DESKTOP_RESERVED.search(word):
        word = f'"{word}"'
    return _EXEC.sub(lambda _: f"Exec={word} tray", text, count=1)


def install(target: Target, args: DeployArgs) -> list[str]:
    lines = [save_deploy_args(layout(target), args)]
    unit = unit_path(target)
    previous = unit.read_text(encoding="utf-8") if unit.exists() else None
    text = render_unit(target.executable)
    write_unit(unit, text)
    lines.append(f"Installed the service unit {unit}.")
    tray = autostart_path(target)
    write_unit(tray, render_autostart(target.executable))
    lines.append(f"Installed the tray autostart {tray} (the tray starts at each user's login).")
    if not target.manage:
        lines.append(
            target.not_told(
                "systemd is not running here: the service is installed but not started; "
                f"once systemd runs, `systemctl enable --now {UNIT}` starts it."
            )
        )
        return lines
    commands = [
        Command(("systemctl", "daemon-reload")),
        Command(("systemctl", "enable", "--now", UNIT)),
    ]
    if previous is not None and previous != text:
        # enable --now leaves a running service as it is; the unit changed (a new ExecStart):
        # restart with it. New installer arguments need no restart: the daemon rereads them.
        commands.append(Command(("systemctl", "restart", UNIT)))
    for command in commands:
        target.run(command)
        lines.append(f"Ran `{command}`.")
    lines.append(f"{UNIT} is enabled and running; `holdfast status` shows where it stands.")
    return lines


def uninstall(target: Target, purge: bool) -> list[str]:
    unit = unit_path(target)
    tray = autostart_path(target)
    # What `systemctl enable` made; removed here too when systemd did not run to disable it.
    wanted = target.path(_UNIT_FOLDER) / "multi-user.target.wants" / UNIT
    lines: list[str] = []
    if not (unit.exists() or tray.exists() or wanted.is_symlink()):
        lines.append("The Holdfast service is not installed; nothing to remove.")
    else:
        told = target.manage and unit.exists()
        if told:
            command = Command(("systemctl", "disable", "--now", UNIT))
            target.run(command)
            lines.append(f"Ran `{command}`.")
        for path in (unit, wanted):
            if remove_file(path):
                lines.append(f"Removed {path}.")
        if told:
            command = Command(("systemctl", "daemon-reload"))
            target.run(command)
            lines.append(f"Ran `{command}`.")
        if remove_file(tray):
            lines.append(f"Removed {tray}; tray icons already open go at their users' logout.")
    paths = layout(target)
    lines += forget_folders([paths.conf, paths.state, paths.log, paths.run], purge)
    return lines


def _systemd_running(root: Path) -> bool:
    # sd_booted(3): how systemd's own tools tell that it is the init system.
    return (root / "run/systemd/system").is_dir()


BACKEND = Backend(
    executable_problem=posix_executable_problem,
    manager_running=_systemd_running,
    install=install,
    uninstall=uninstall,
)

__all__ = [
    "AUTOSTART",
    "BACKEND",
    "DEFAULT_EXECUTABLE",
    "UNIT",
    "layout",
    "render_autostart",
    "render_unit",
]
