"""`holdfast install` / `holdfast uninstall`: the system service and the tray's autostart.

    install(CP_ARGS) ─▶ parse (DeployArgsError: nothing written) ─▶ privileges (Refused)
        ─▶ deploy.properties ─▶ service and tray files ─▶ the service manager, when it runs
        ─▶ with CP_SILENT=false, the tray in each active local graphical session (best effort)

One backend per OS: agent.service_linux (systemd, XDG autostart), agent.service_macos
(launchd), agent.service_windows (the SCM through sc.exe, the Run key through reg.exe).
Every path is under `root`, so an image, a chroot or a test gets the same files as `/`; the
service manager is told only when `root` is `/` and it runs there, unless the caller says
otherwise. Both operations are idempotent.

The tray's autostart is installed even when DEVICE_CLOAKED=true: the tray reads the cloaking
from `holdfast status` and exits at once while it holds, so new installer arguments given any
way (`holdfast run --deploy-args` too) take effect at the next login without a reinstall.
With CP_SILENT=false an install also opens the tray in the sessions already open (Linux,
macOS; on Windows at the next sign-in), but never on a cloaked device.

The unit files are package data (agent/units/, named in pyproject.toml), byte-for-byte copies
of the repository's service_units/ (a test keeps them equal), so an installed wheel finds them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from agent.deploy_args import DeployArgs, parse_cp_args, save
from agent.errors import AgentError, Refused, UsageError
from agent.frozen import original_environment
from agent.paths import AgentPaths
from agent.state import write_atomic

Runner = Callable[[list[str]], None]
SYSTEM_ROOT = Path("/")
# Characters that systemd units and desktop entries each escape their own way, and no sane
# install path has: such a path is refused rather than escaped three ways.
_UNSAFE_IN_POSIX_PATH = re.compile(r"[\"'`$\\\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Command:
    """One service-manager command; a failure with an exit code in `harmless` means "already
    so" (not running, not installed), and `any_failure_harmless` marks best-effort cleanup."""

    argv: tuple[str, ...]
    harmless: frozenset[int] = field(default_factory=frozenset)
    any_failure_harmless: bool = False

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class DesktopSession:
    """A user's graphical session open at this device's screen, where the tray can open now."""

    user: str
    uid: int
    home: str | None = None
    # X11: the display and its authority file, for starting a program in it from outside.
    display: str | None = None
    xauthority: str | None = None
    # A `holdfast tray` of this user already runs: opening another would show two icons.
    tray_open: bool = False


# The sessions to open the tray in; AgentError when they cannot be found out.
SessionFinder = Callable[[], list[DesktopSession]]


def no_sessions() -> list[DesktopSession]:
    return []


@dataclass(frozen=True)
class Target:
    """Where and how one install or uninstall acts."""

    root: Path
    runner: Runner
    # Whether to tell the service manager (systemctl, launchctl, sc.exe) about the files.
    manage: bool
    # The `holdfast` command the service runs; None: where the OS package installs it.
    executable: str | None
    # Where the tray may open at install time (CP_SILENT=false), when the manager is told.
    sessions: SessionFinder = no_sessions

    @property
    def is_system(self) -> bool:
        return self.root == SYSTEM_ROOT

    def path(self, system_path: str) -> Path:
        """`system_path` (absolute, POSIX) under this target's root."""
        return self.root / system_path.lstrip("/")

    def run(self, command: Command) -> bool:
        """Run `command`; False when it failed harmlessly, AgentError when it failed otherwise."""
        try:
            self.runner(list(command.argv))
        except subprocess.CalledProcessError as exc:
            if command.any_failure_harmless or exc.returncode in command.harmless:
                return False
            raise AgentError(f"`{command}` failed with exit code {exc.returncode}") from exc
        except OSError as exc:
            raise AgentError(f"could not run `{command}`: {exc.strerror or exc}") from exc
        return True

    def not_told(self, how: str) -> str:
        """The line saying the service manager was left alone, and how to start the agent."""
        if not self.is_system:
            return f"Files written under {self.root}; the service manager was not told."
        return how


@dataclass(frozen=True)
class Backend:
    """What one OS needs: its path rules, how to see its service manager, and the work."""

    # Why `holdfast` at this path cannot be installed as the service, or None.
    executable_problem: Callable[[str], str | None]
    # Whether the service manager runs on the system at `root` ("/").
    manager_running: Callable[[Path], bool]
    install: Callable[[Target, DeployArgs], list[str]]
    uninstall: Callable[[Target, bool], list[str]]
    # The graphical sessions open on the system at `/`.
    desktop_sessions: SessionFinder = no_sessions


def install(
    deploy_args_text: str,
    *,
    root: Path = SYSTEM_ROOT,
    platform: str = sys.platform,
    runner: Runner | None = None,
    executable: str | None = None,
    service_manager: bool | None = None,
    sessions: SessionFinder | None = None,
) -> list[str]:
    """Install the service and the tray autostart, and start the service; lines saying what.

    `executable`: the absolute path of the `holdfast` command the service and the tray run
    (default: where the OS package puts it). `service_manager`: whether to tell the service
    manager (None: when `root` is `/` and it runs there). `sessions`: where the tray opens
    now when CP_SILENT=false and the service manager is told (default: the OS's own account
    of the graphical sessions open). Runs again over an existing install with the same
    result, the new installer arguments taking effect.
    """
    args = parse_cp_args(deploy_args_text)
    backend = _backend(platform)
    target = _target(
        backend,
        "installing",
        root=root,
        platform=platform,
        runner=runner,
        service_manager=service_manager,
        executable=executable,
        sessions=sessions,
    )
    lines = [f"Warning: {warning}" for warning in args.warnings]
    return lines + backend.install(target, args)


def uninstall(
    *,
    purge: bool,
    root: Path = SYSTEM_ROOT,
    platform: str = sys.platform,
    runner: Runner | None = None,
    service_manager: bool | None = None,
) -> list[str]:
    """Stop and remove the service and the tray autostart; with `purge`, the agent's files too.

    Without `purge` the settings, state and logs stay, so a reinstall keeps the device's
    identity. Uninstalling what is not installed says so and succeeds.
    """
    backend = _backend(platform)
    target = _target(
        backend,
        "removing",
        root=root,
        platform=platform,
        runner=runner,
        service_manager=service_manager,
        executable=None,
    )
    return backend.uninstall(target, purge)


def _backend(platform: str) -> Backend:
    if platform.startswith("linux"):
        from agent.service_linux import BACKEND as linux

        return linux
    if platform == "darwin":
        from agent.service_macos import BACKEND as macos

        return macos
    if platform == "win32":
        from agent.service_windows import BACKEND as windows

        return windows
    raise AgentError(f"installing the service is not supported on {platform} yet")


def _target(
    backend: Backend,
    verb: str,
    *,
    root: Path,
    platform: str,
    runner: Runner | None,
    service_manager: bool | None,
    executable: str | None,
    sessions: SessionFinder | None = None,
) -> Target:
    problem = None if executable is None else backend.executable_problem(executable)
    if problem is not None:
        raise UsageError(f"the holdfast executable {executable!r} {problem}")
    if root == SYSTEM_ROOT and not _is_administrator(platform):
        if platform == "win32":
            raise Refused(
                f"{verb} the Holdfast service needs administrator rights: run it again from "
                'a prompt opened with "Run as administrator"'
            )
        raise Refused(f"{verb} the Holdfast service needs root: run it again with sudo")
    if service_manager is None:
        service_manager = root == SYSTEM_ROOT and backend.manager_running(root)
    return Target(
        root,
        runner or _run_checked,
        service_manager,
        executable,
        sessions or backend.desktop_sessions,
    )


def _is_administrator(platform: str) -> bool:
    if sys.platform == "win32":
        import ctypes

        return bool(ctypes.windll.shell32.IsUserAnAdmin())
    return platform != "win32" and os.geteuid() == 0


def _run_checked(argv: list[str]) -> None:
    # Frozen, without the bootloader's library path: systemctl must load its own libraries.
    subprocess.run(argv, check=True, env=original_environment())


def posix_executable_problem(path: str) -> str | None:
    """Why a POSIX path cannot be the service's executable, or None."""
    if not path.startswith("/"):
        return "is not an absolute path"
    if _UNSAFE_IN_POSIX_PATH.search(path):
        return (
            "has a quote, '$', '`', a backslash or a control character in its path; "
            "install holdfast where its path has none"
        )
    return None


def unit_template(name: str) -> str:
    """The text of a shipped unit file (agent/units/NAME, a copy of service_units/)."""
    try:
        return resources.files("agent").joinpath("units", name).read_text(encoding="utf-8")
    except FileNotFoundError:
        # A wheel built without the package data: say so rather than show a traceback.
        raise AgentError(
            f"this installation of holdfast lacks agent/units/{name}; reinstall holdfast"
        ) from None


def write_unit(path: Path, text: str) -> None:
    """Write a service definition: root-owned, readable by all, writable by root only."""
    write_atomic(path, text.encode("utf-8"), mode=0o644)


def save_deploy_args(paths: AgentPaths, args: DeployArgs, readers: str = "root") -> str:
    """Persist the installer arguments in a conf folder only `readers` can enter."""
    paths.conf.mkdir(parents=True, exist_ok=True)
    paths.conf.chmod(0o700)  # on Windows, ACLs do this: see agent.service_windows
    save(args, paths.deploy_properties)
    return (
        f"Saved the installer arguments in {paths.deploy_properties} (readable by {readers} only)."
    )


def save_installer_arguments(args: DeployArgs, paths: AgentPaths) -> list[str]:
    """What `install` does first, alone, for a service an OS package installed; lines saying so.

    A .deb ships the unit and the tray's autostart itself and tells systemd in its maintainer
    scripts: `holdfast save-deploy-args` in its postinst leaves the rest to them.
    """
    return [f"Warning: {warning}" for warning in args.warnings] + [save_deploy_args(paths, args)]


def remove_file(path: Path) -> bool:
    """Remove `path` (a file or a symbolic link); False when it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def remove_folder(path: Path) -> bool:
    """Remove `path` and everything in it, not following links; False when it was not there."""
    if path.is_symlink():
        path.unlink()
        return True
    if not path.exists():
        return False
    shutil.rmtree(path)
    return True


CLOAKED_TRAY = (
    "DEVICE_CLOAKED=true: the tray's autostart is installed all the same, and the tray stays "
    "hidden (it exits at once) while the device is cloaked."
)


def open_tray_now(
    target: Target,
    args: DeployArgs,
    commands_for: Callable[[DesktopSession], list[Command]],
) -> list[str]:
    """CP_SILENT=false: open the tray in each graphical session already open; lines saying so.

    `commands_for` gives, for one session, commands that each open the tray there: the first
    that succeeds is enough, the others are fallbacks. Best effort: a failure is a line saying
    the tray opens at the next login, never a failed install. Nothing is opened when
    CP_SILENT=true (the default), on a cloaked device, or when the service manager was not
    told (an image, a chroot: no one is looking at its screen).
    """
    if args.silent or args.cloaked or not target.manage:
        return []
    try:
        sessions = target.sessions()
    except AgentError as exc:
        return [
            f"Could not find the graphical sessions to open the tray in: {exc.message}; "
            "it opens at each user's next login."
        ]
    lines = []
    for session in sessions:
        if session.tray_open:
            lines.append(f"The tray is already open for {session.user}.")
            continue
        failures = []
        for command in commands_for(session):
            try:
                target.run(command)
            except AgentError as exc:
                failures.append(exc.message)
                continue
            lines.append(f"Opened the tray for {session.user}: ran `{command}`.")
            break
        else:
            lines.append(
                f"Could not open the tray for {session.user}: {'; '.join(failures)}; "
                "it opens at the next login."
            )
    return lines


def forget_folders(folders: list[Path], purge: bool) -> list[str]:
    """Purge the agent's folders, or say which were kept and how to remove them."""
    if purge:
        return [f"Removed {folder}." for folder in folders if remove_folder(folder)]
    kept = [str(folder) for folder in folders if folder.exists()]
    if not kept:
        return []
    return [
        f"Kept the agent's settings, state and logs ({', '.join(kept)}); "
        "`holdfast uninstall --purge` removes them."
    ]


__all__ = [
    "Backend",
    "Command",
    "DesktopSession",
    "Runner",
    "SessionFinder",
    "Target",
    "install",
    "save_installer_arguments",
    "uninstall",
]
