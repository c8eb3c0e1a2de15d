"""The Windows service: HoldfastService in the SCM (sc.exe) and the tray in the Run key (reg.exe).

service_units/windows/README.md explains each command. The tools are named by their full path
in System32: an elevated installer must not run an sc.exe planted in the current folder. The
SCM runs `holdfast.exe service` (agent.service_windows_host), not `holdfast run`: a service
process must talk to the SCM, which a console program does not.

The tray is not opened at install time, even with CP_SILENT=false: starting a program on a
signed-in user's desktop from an installer takes that user's token (WTSQueryUserToken, for
LocalSystem only, so not from an elevated administrator) and CreateProcessAsUser, which is
not done here. The Run key opens it at each user's next sign-in.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PureWindowsPath

from agent.deploy_args import DeployArgs
from agent.paths import AgentPaths
from agent.service import CLOAKED_TRAY, Backend, Command, Target, forget_folders, save_deploy_args

SERVICE = "HoldfastService"
DISPLAY_NAME = "Holdfast Backup Agent"
DESCRIPTION = "Backs up this device's user folders to the organization's Holdfast server."
RUN_KEY = r"HKLM\Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "Holdfast"
DEFAULT_EXECUTABLE = r"C:\Program Files\Holdfast\holdfast.exe"
# The hidden subcommand the SCM starts: agent.service_windows_host.main.
SERVICE_COMMAND = "service"
# Restart 30 s after each failure, forever (the SCM repeats the last action); the count of
# failures resets after a day without one.
FAILURE_ACTIONS = "restart/30000/restart/30000/restart/30000"
FAILURE_RESET_SECONDS = "86400"
# SYSTEM and Administrators: conf holds the policy token (ProgramData lets Users read).
CONF_READERS = ("*S-1-5-18", "*S-1-5-32-544")

# Exit codes that mean "already so": sc.exe exits with the Win32 error code.
_SERVICE_EXISTS = 1073
_SERVICE_DOES_NOT_EXIST = 1060
_NET_NOT_STARTED = 2  # net.exe: "The ... service is not started."
_REG_NOT_FOUND = 1  # reg.exe: "The system was unable to find the specified registry key or value."
_UNSAFE_IN_PATH = re.compile(r'["\x00-\x1f\x7f]')


def system32() -> str:
    return str(PureWindowsPath(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32"))


def _tool(folder: str, name: str) -> str:
    return str(PureWindowsPath(folder, name))


def protect_conf_command(conf: str, folder: str) -> Command:
    """icacls: `conf` readable by SYSTEM and Administrators only, and what is created in it."""
    grants = [f"{sid}:(OI)(CI)F" for sid in CONF_READERS]
    return Command((_tool(folder, "icacls.exe"), conf, "/inheritance:r", "/grant:r", *grants))


def service_binary_path(executable: str) -> str:
    """The service's command line (sc.exe binPath=): the service host in `executable`."""
    # The quotes keep a path with spaces from being read as C:\Program.exe (an unquoted
    # service path).
    return f'"{executable}" {SERVICE_COMMAND}'


def install_commands(executable: str, folder: str) -> list[Command]:
    """Register (or update) the service, its recovery, the tray's Run value; (re)start it."""
    sc = _tool(folder, "sc.exe")
    # sc.exe syntax: "key=" and its value are two arguments.
    settings = (
        "binPath=",
        service_binary_path(executable),
        "start=",
        "auto",
        "DisplayName=",
        DISPLAY_NAME,
    )
    return [
        Command((sc, "create", SERVICE, *settings), harmless=frozenset({_SERVICE_EXISTS})),
        # For an existing service: the same settings, so a reinstall may move the executable.
        Command((sc, "config", SERVICE, *settings)),
        Command((sc, "description", SERVICE, DESCRIPTION)),
        Command(
            (sc, "failure", SERVICE, "reset=", FAILURE_RESET_SECONDS, "actions=", FAILURE_ACTIONS)
        ),
        # Recovery also when the agent exits with an error code, not only when it crashes.
        Command((sc, "failureflag", SERVICE, "1")),
        Command(
            (
                _tool(folder, "reg.exe"),
                "add",
                RUN_KEY,
                "/v",
                RUN_VALUE,
                "/t",
                "REG_SZ",
                "/d",
                f'"{executable}" tray',
                "/f",
                "/reg:64",  # the 64-bit view, even from a 32-bit Python
            )
        ),
        # net.exe waits until the service has stopped, where sc.exe would return at once.
        Command(
            (_tool(folder, "net.exe"), "stop", SERVICE), harmless=frozenset({_NET_NOT_STARTED})
        ),
        Command((sc, "start", SERVICE)),
    ]


def uninstall_commands(folder: str) -> tuple[Command, Command, Command]:
    """Stop the service, delete it, delete the tray's Run value; each harmless when absent."""
    return (
        Command(
            (_tool(folder, "net.exe"), "stop", SERVICE), harmless=frozenset({_NET_NOT_STARTED})
        ),
        Command(
            (_tool(folder, "sc.exe"), "delete", SERVICE),
            harmless=frozenset({_SERVICE_DOES_NOT_EXIST}),
        ),
        Command(
            (_tool(folder, "reg.exe"), "delete", RUN_KEY, "/v", RUN_VALUE, "/f", "/reg:64"),
            harmless=frozenset({_REG_NOT_FOUND}),
        ),
    )


def base_folder(target: Target) -> Path:
    if target.is_system:
        return Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "Holdfast"
    return target.root / "ProgramData" / "Holdfast"


def layout(target: Target) -> AgentPaths:
    """The agent's folders (CONTRACT.md section 4) under the target's root."""
    base = base_folder(target)
    return AgentPaths(base / "conf", base / "state", base / "log", base / "run")


def install(target: Target, args: DeployArgs) -> list[str]:
    paths = layout(target)
    lines = []
    if target.manage or target.is_system:
        # Before deploy.properties exists, so it is never readable by Users, even briefly.
        paths.conf.mkdir(parents=True, exist_ok=True)
        command = protect_conf_command(str(paths.conf), system32())
        target.run(command)
        lines.append(f"Ran `{command}`.")
    lines.append(save_deploy_args(paths, args, readers="SYSTEM and Administrators"))
    if not target.manage:
        lines.append(target.not_told("The service was not registered with the SCM."))
        return lines
    for command in install_commands(target.executable or DEFAULT_EXECUTABLE, system32()):
        target.run(command)
        lines.append(f"Ran `{command}`.")
    lines.append(f"{SERVICE} is installed and starting; `holdfast status` shows where it stands.")
    if args.cloaked:
        lines.append(CLOAKED_TRAY)  # the Run value is the tray's autostart
    elif not args.silent:
        lines.append(
            "CP_SILENT=false: the tray opens at each user's next sign-in (the Run key); "
            "Windows is not asked to open it in sessions already signed in."
        )
    return lines


def uninstall(target: Target, purge: bool) -> list[str]:
    lines = []
    if not target.manage:
        lines.append(target.not_told("The SCM and the registry were not told."))
    else:
        stop, delete, unregister = uninstall_commands(system32())
        target.run(stop)
        done = [command for command in (delete, unregister) if target.run(command)]
        if done:
            lines += [f"Ran `{command}`." for command in (stop, *done)]
        else:
            lines.append("The Holdfast service is not installed; nothing to remove.")
    lines += forget_folders([base_folder(target)], purge)
    return lines


def _executable_problem(path: str) -> str | None:
    if not PureWindowsPath(path).is_absolute():
        return "is not an absolute path (with its drive, as C:\\...)"
    if _UNSAFE_IN_PATH.search(path):
        return "has a quote or a control character in its path"
    return None


BACKEND = Backend(
    executable_problem=_executable_problem,
    manager_running=lambda _root: True,  # the SCM is always there
    install=install,
    uninstall=uninstall,
)

__all__ = [
    "BACKEND",
    "DEFAULT_EXECUTABLE",
    "RUN_KEY",
    "RUN_VALUE",
    "SERVICE",
    "SERVICE_COMMAND",
    "install_commands",
    "layout",
    "protect_conf_command",
    "service_binary_path",
    "uninstall_commands",
]
