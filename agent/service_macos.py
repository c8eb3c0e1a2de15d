"""The macOS service: a LaunchDaemon for the agent and a LaunchAgent for the tray.

With CP_SILENT=false the install also opens the tray for the user at the screen, by loading
the tray's LaunchAgent into that user's GUI domain as a login does (`launchctl bootstrap
gui/UID`), or starting it there when it is loaded already (`launchctl kickstart`). Not
`launchctl asuser UID holdfast tray`: that runs the tray as root (asuser changes the
bootstrap namespace, not the user) and outside the com.holdfast.tray job, so launchd would
neither keep it to one instance nor restart it after a crash.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from agent.deploy_args import DeployArgs
from agent.errors import AgentError
from agent.paths import AgentPaths
from agent.service import (
    CLOAKED_TRAY,
    Backend,
    Command,
    DesktopSession,
    Target,
    forget_folders,
    open_tray_now,
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
    if args.cloaked:
        lines.append(CLOAKED_TRAY)
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
    lines += open_tray_now(target, args, lambda session: open_tray_commands(session, tray))
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


def open_tray_commands(session: DesktopSession, tray: Path) -> list[Command]:
    """Commands that each open the tray's LaunchAgent `tray` in the session's GUI domain."""
    domain = f"gui/{session.uid}"
    return [
        # Loads it as the user's login does; RunAtLoad starts the tray, as that user.
        Command(("launchctl", "bootstrap", domain, str(tray))),
        # It was loaded already (at the user's login): start it, if it is not running.
        Command(("launchctl", "kickstart", f"{domain}/{TRAY}")),
    ]


def console_session() -> list[DesktopSession]:
    """The user at the screen: the owner of /dev/console (as `stat -f %Su /dev/console`)."""
    import pwd  # POSIX only: imported where it is used, so Windows can import this module

    try:
        uid = Path("/dev/console").stat().st_uid
    except OSError as exc:
        raise AgentError(f"could not tell who is at the screen: {exc.strerror or exc}") from exc
    if uid == 0:
        return []  # the login window: no one is logged in at the screen
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return []
    if user.pw_name.startswith("_"):
        return []  # _mbsetupuser: the Setup Assistant, not a person's session
    return [DesktopSession(user=user.pw_name, uid=uid, home=user.pw_dir)]


BACKEND = Backend(
    executable_problem=posix_executable_problem,
    manager_running=lambda _root: True,  # launchd is always there
    install=install,
    uninstall=uninstall,
    desktop_sessions=console_session,
)

__all__ = [
    "BACKEND",
    "DAEMON",
    "DEFAULT_EXECUTABLE",
    "TRAY",
    "console_session",
    "layout",
    "open_tray_commands",
    "render_plist",
]
