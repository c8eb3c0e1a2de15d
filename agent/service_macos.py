"""The macOS service: a LaunchDaemon for the agent and a LaunchAgent for the tray."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

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

DAEMON = "com.holdfast.agent"
TRAY = "com.holdfast.tray"
# Where the .pkg installs the command: /usr/bin is read-only under System Integrity Protection.
DEFAULT_EXECUTABLE = "/usr/local/bin/holdfast"
_PROGRAM = f"<string>{DEFAULT_EXECUTABLE}</string>"
_BASE = "/Library/Application Support/Holdfast"


def layout(target: Target) -> AgentPaths:
    """The agent's folders (CONTRACT.md section 4) under the target's root."""
    base = target.path(_BASE)
    return AgentPaths(
        conf=base / "conf",
        state=base / "state",
        log=target.path("/Library/Logs/Holdfast"),
        run=base / "run",
    )


def daemon_plist(target: Target) -> Path:
    return target.path("/Library/LaunchDaemons") / f"{DAEMON}.plist"


def tray_plist(target: Target) -> Path:
    return target.path("/Library/LaunchAgents") / f"{TRAY}.plist"


def render_plist(label: str, executable: str | None) -> str:
    """The shipped plist of `label`, its program `executable` (already checked) when given.

    A text substitution rather than plistlib, so the installed file keeps its comments.
    """
    text = unit_template(f"{label}.plist")
    if executable is None:
        return text
    return text.replace(_PROGRAM, f"<string>{escape(executable)}</string>", 1)


def install(target: Target, args: DeployArgs) -> list[str]:
    paths = layout(target)
    lines = [save_deploy_args(paths, args)]
    # launchd opens StandardOutPath/StandardErrorPath but does not create their folder.
    paths.log.mkdir(parents=True, exist_ok=True)
    daemon = daemon_plist(target)
    reinstall = daemon.exists()
    write_unit(daemon, render_plist(DAEMON, target.executable))
    lines.append(f"Installed the LaunchDaemon {daemon}.")
    tray = tray_plist(target)
    write_unit(tray, render_plist(TRAY, target.executable))
    lines.append(f"Installed the LaunchAgent {tray} (the tray starts at each user's login).")
    if not target.manage:
        lines.append(
            target.not_told(
                f"launchd was not told: `launchctl bootstrap system {daemon}` starts the service."
            )
        )
        return lines
    commands = []
    if reinstall:
        # launchd reads a plist only when it loads it: unload the old one (if loaded at all).
        commands.append(
            Command(("launchctl", "bootout", f"system/{DAEMON}"), any_failure_harmless=True)
        )
    commands += [
        # launchd remembers a `launchctl disable` across reboots; installing undoes it.
        Command(("launchctl", "enable", f"system/{DAEMON}")),
        Command(("launchctl", "bootstrap", "system", str(daemon))),
    ]
    for command in commands:
        target.run(command)
        lines.append(f"Ran `{command}`.")
    lines.append(f"{DAEMON} is loaded and running; `holdfast status` shows where it stands.")
    return lines


def uninstall(target: Target, purge: bool) -> list[str]:
    daemon = daemon_plist(target)
    tray = tray_plist(target)
    lines: list[str] = []
    if not (daemon.exists() or tray.exists()):
        lines.append("The Holdfast service is not installed; nothing to remove.")
    else:
        if target.manage and daemon.exists():
            # Fails harmlessly when it is not loaded; stops the agent when it is.
            command = Command(
                ("launchctl", "bootout", f"system/{DAEMON}"), any_failure_harmless=True
            )
            target.run(command)
            lines.append(f"Ran `{command}`.")
        if remove_file(daemon):
            lines.append(f"Removed {daemon}.")
        if remove_file(tray):
            lines.append(f"Removed {tray}; tray icons already open go at their users' logout.")
    paths = layout(target)
    lines += forget_folders([target.path(_BASE), paths.log], purge)
    return lines


BACKEND = Backend(
    executable_problem=posix_executable_problem,
    manager_running=lambda _root: True,  # launchd is always there
    install=install,
    uninstall=uninstall,
)

__all__ = ["BACKEND", "DAEMON", "DEFAULT_EXECUTABLE", "TRAY", "layout", "render_plist"]
