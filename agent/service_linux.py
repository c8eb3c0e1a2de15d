"""The Linux service: a systemd unit in /etc/systemd/system and an XDG autostart for the tray.

/etc, not /usr/lib: `holdfast install` is the administrator's own act, and a distribution
package that ships the unit under /usr/lib/systemd/system is not overwritten by it.

With CP_SILENT=false the install also opens the tray in each active local X11 or Wayland
session logind knows (`loginctl`), as its user: first through that user's systemd manager
(`systemd-run --user --machine=USER@`, systemd 248 or later), so the tray runs with the
session's own environment and its output goes to the user's journal; else through `runuser`
with the session's X display, detached so the install does not wait for it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePath

import psutil

from agent.deploy_args import DeployArgs
from agent.errors import AgentError
from agent.frozen import original_environment
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

UNIT = "holdfast-agent.service"
AUTOSTART = "holdfast-tray.desktop"
DEFAULT_EXECUTABLE = "/usr/bin/holdfast"
_UNIT_FOLDER = "/etc/systemd/system"
_EXEC_START = re.compile(r"^ExecStart=.*$", re.MULTILINE)
_EXEC = re.compile(r"^Exec=.*$", re.MULTILINE)
# The Desktop Entry specification's reserved characters (those a path may still hold here):
# an argument with one of them must be quoted.
_DESKTOP_RESERVED = re.compile(r"[\s<>~|&;*?#()]")
# The transient unit the tray opened at install time runs as, in the user's manager.
TRAY_UNIT = "holdfast-tray-install"
# What `loginctl show-session` is asked for: who, what kind of session, and its X display.
SESSION_PROPERTIES = ("Name", "User", "Class", "Type", "Remote", "Active", "Display")
# A line of `loginctl list-sessions --no-legend`: the session ID, then the user's UID.
_SESSION_LINE = re.compile(r"^\s*(\S+)\s+\d+\s")
_LOGINCTL_SECONDS = 15
# The runuser fallback gives the tray this environment, not the installer's.
_TRAY_PATH = "/usr/local/bin:/usr/bin:/bin"
# The executable is $0, never part of the script, so its path needs no quoting; the tray
# must not hold the installer's output open, or a caller reading it would wait forever.
_DETACHED_TRAY = 'exec "$0" tray </dev/null >/dev/null 2>&1'


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
    if args.cloaked:
        lines.append(CLOAKED_TRAY)
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
    executable = target.executable or DEFAULT_EXECUTABLE
    lines += open_tray_now(target, args, lambda session: open_tray_commands(session, executable))
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


# The tray at install time


def open_tray_commands(session: DesktopSession, executable: str) -> list[Command]:
    """Commands that each start `executable tray` as the session's user, in that session."""
    user = session.user
    display = [f"--setenv=DISPLAY={session.display}"] if session.display else []
    commands = [
        # The user's manager has the session's environment (WAYLAND_DISPLAY, XAUTHORITY, the
        # D-Bus address); DISPLAY is given too, for a session that did not export it there.
        Command(
            (
                "systemd-run",
                "--user",
                f"--machine={user}@",
                "--collect",
                "--quiet",
                f"--unit={TRAY_UNIT}",
                *display,
                executable,
                "tray",
            )
        )
    ]
    if session.display is None:
        return commands  # Wayland without a known X display: runuser has nothing to aim at
    environment = [
        f"PATH={_TRAY_PATH}",
        f"USER={user}",
        f"LOGNAME={user}",
        *([f"HOME={session.home}"] if session.home else []),
        f"DISPLAY={session.display}",
        *([f"XAUTHORITY={session.xauthority}"] if session.xauthority else []),
        f"XDG_RUNTIME_DIR=/run/user/{session.uid}",
        f"DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{session.uid}/bus",
    ]
    commands.append(
        Command(
            (
                "runuser",
                "-u",
                user,
                "--",
                "env",
                "-i",
                *environment,
                # Its own session: closing the installer's terminal must not hang it up.
                "setsid",
                "--fork",
                "sh",
                "-c",
                _DETACHED_TRAY,
                executable,
            )
        )
    )
    return commands


def session_ids(listing: str) -> list[str]:
    """The session IDs in the output of `loginctl list-sessions --no-legend`."""
    return [m.group(1) for line in listing.splitlines() if (m := _SESSION_LINE.match(line))]


def graphical_session(properties: str) -> DesktopSession | None:
    """The session `loginctl show-session -p ...` describes, if local, active and graphical."""
    values = dict(line.partition("=")[::2] for line in properties.splitlines() if "=" in line)
    if (
        values.get("Class") != "user"  # not the display manager's greeter
        or values.get("Type") not in ("x11", "wayland")
        or values.get("Remote") != "no"
        or values.get("Active") != "yes"
        or not values.get("Name")
        or not values.get("User", "").isdigit()
    ):
        return None
    return DesktopSession(
        user=values["Name"], uid=int(values["User"]), display=values.get("Display") or None
    )


def is_tray_command(cmdline: Sequence[str]) -> bool:
    """Whether a process's command line is `holdfast ... tray`."""
    if "tray" not in cmdline:
        return False
    before = cmdline[: list(cmdline).index("tray")]
    return any(PurePath(word).name == "holdfast" for word in before)


def local_graphical_sessions() -> list[DesktopSession]:
    """The active local X11 and Wayland sessions logind knows, one per user."""
    found: dict[str, DesktopSession] = {}
    for session_id in session_ids(_loginctl("list-sessions", "--no-legend")):
        properties = [word for name in SESSION_PROPERTIES for word in ("-p", name)]
        try:
            session = graphical_session(_loginctl("show-session", session_id, *properties))
        except AgentError:
            continue  # it ended since it was listed
        if session is not None and session.user not in found:
            found[session.user] = _with_local_facts(session)
    return list(found.values())


def _loginctl(*args: str) -> str:
    argv = ["loginctl", *args]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=True,
            timeout=_LOGINCTL_SECONDS,
            env=original_environment(),
        )
    except subprocess.CalledProcessError as exc:
        said = (exc.stderr or "").strip() or f"exit code {exc.returncode}"
        raise AgentError(f"`{shlex.join(argv)}` failed: {said}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AgentError(f"could not run `{shlex.join(argv)}`: {exc}") from exc
    return done.stdout


def _with_local_facts(session: DesktopSession) -> DesktopSession:
    import pwd  # POSIX only: imported where it is used, so Windows can import this module

    try:
        home: str | None = pwd.getpwnam(session.user).pw_dir
    except KeyError:
        home = None
    return replace(
        session,
        home=home,
        xauthority=_xauthority(session.uid, home),
        tray_open=_tray_runs_for(session.uid),
    )


def _xauthority(uid: int, home: str | None) -> str | None:
    """Where the session's X authority file most likely is: GDM's, SDDM's, then ~/.Xauthority."""
    runtime = Path(f"/run/user/{uid}")
    candidates = [runtime / "gdm" / "Xauthority", *sorted(runtime.glob("xauth_*"))]
    if home:
        candidates.append(Path(home) / ".Xauthority")
    return next((str(path) for path in candidates if path.is_file()), None)


def _tray_runs_for(uid: int) -> bool:
    for process in psutil.process_iter(["uids", "cmdline"]):
        uids, cmdline = process.info["uids"], process.info["cmdline"]
        if uids is not None and uids.real == uid and cmdline and is_tray_command(cmdline):
            return True
    return False


def _systemd_running(root: Path) -> bool:
    # sd_booted(3): how systemd's own tools tell that it is the init system.
    return (root / "run/systemd/system").is_dir()


BACKEND = Backend(
    executable_problem=posix_executable_problem,
    manager_running=_systemd_running,
    install=install,
    uninstall=uninstall,
    desktop_sessions=local_graphical_sessions,
)

__all__ = [
    "AUTOSTART",
    "BACKEND",
    "DEFAULT_EXECUTABLE",
    "SESSION_PROPERTIES",
    "TRAY_UNIT",
    "UNIT",
    "graphical_session",
    "is_tray_command",
    "layout",
    "local_graphical_sessions",
    "open_tray_commands",
    "render_autostart",
    "render_unit",
    "session_ids",
]
