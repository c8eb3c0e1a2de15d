"""The shipped service definitions: systemd, XDG autostart, launchd, and the Windows commands."""

from __future__ import annotations

import configparser
import os
import plistlib
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import service_linux, service_macos, service_windows, service_windows_host
from agent.daemon import Daemon
from agent.errors import AgentError, UsageError
from agent.paths import AgentPaths
from agent.service import DesktopSession, Target, install
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "service_units"
PACKAGED = REPO / "agent" / "units"
CP_ARGS = (
    "DEPLOYMENT_URL=https://host:4285&DEPLOYMENT_POLICY_TOKEN=0fb12341-246b-448d-b07f-c6573ad5ad02"
)
SYSTEM32 = r"C:\Windows\System32"
WINDOWS_EXE = r"C:\Program Files\Holdfast\holdfast.exe"
SHIPPED = {
    "holdfast-agent.service": UNITS / "linux" / "holdfast-agent.service",
    "holdfast-tray.desktop": UNITS / "linux" / "holdfast-tray.desktop",
    "com.holdfast.agent.plist": UNITS / "macos" / "com.holdfast.agent.plist",
    "com.holdfast.tray.plist": UNITS / "macos" / "com.holdfast.tray.plist",
}


def ini(text: str) -> configparser.ConfigParser:
    """A systemd unit or desktop entry as sections of case-sensitive keys."""
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def systemd_verify(unit: Path) -> subprocess.CompletedProcess[str]:
    require_tool(
        shutil.which("systemd-analyze") is not None,
        "systemd-analyze is not installed (Debian package systemd)",
    )
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def executable_at(folder: Path) -> Path:
    """An executable `holdfast` in `folder`: a copy of `true`."""
    true = shutil.which("true")
    assert true is not None
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "holdfast"
    shutil.copy(true, target)
    return target


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_package_ships_the_same_unit_files_as_service_units(name: str) -> None:
    # agent/units/ is what an installed wheel reads; service_units/ is what people read.
    assert (PACKAGED / name).read_bytes() == SHIPPED[name].read_bytes()


def test_the_wheel_ships_the_unit_files() -> None:
    # A wheel has only the package data pyproject.toml names: without these, `holdfast install`
    # from a plain `pip install .` finds no unit to install.
    with (REPO / "pyproject.toml").open("rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["agent"]
    assert "units/*" in package_data


# systemd


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # `systemd-analyze verify` fails a unit whose ExecStart binary does not exist, and no
    # /usr/bin/holdfast exists here: verify a copy naming an existing executable instead.
    text = service_linux.render_unit(str(executable_at(tmp_path / "bin")))
    unit = tmp_path / service_linux.UNIT
    unit.write_text(text)
    result = systemd_verify(unit)
    # Unknown or misspelt settings are only warnings: any output about the unit is a failure.
    assert result.returncode == 0, result.stderr
    assert service_linux.UNIT not in result.stdout + result.stderr


def test_systemd_accepts_the_unit_for_an_executable_whose_path_has_spaces(tmp_path: Path) -> None:
    text = service_linux.render_unit(str(executable_at(tmp_path / "Hold fast" / "bin")))
    assert 'ExecStart="' in text
    unit = tmp_path / service_linux.UNIT
    unit.write_text(text)
    result = systemd_verify(unit)
    assert result.returncode == 0, result.stderr
    assert service_linux.UNIT not in result.stdout + result.stderr


def test_the_unit_runs_the_packaged_agent_and_restarts_it_after_a_failure() -> None:
    service = ini(SHIPPED["holdfast-agent.service"].read_text())["Service"]
    assert service["ExecStart"] == f"{service_linux.DEFAULT_EXECUTABLE} run"
    assert service["Restart"] == "on-failure"
    assert service["TimeoutStopSec"] == "30s"
    assert ini(SHIPPED["holdfast-agent.service"].read_text())["Install"]["WantedBy"] == (
        "multi-user.target"
    )


def test_the_unit_makes_the_system_read_only_but_for_the_agents_own_folders() -> None:
    service = ini(SHIPPED["holdfast-agent.service"].read_text())["Service"]
    folders = service_linux.layout(_system_target())
    assert set(service["ReadWritePaths"].split()) == {
        str(folders.conf),
        str(folders.state),
        str(folders.log),
        str(folders.run),
    }
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "read-only"  # backups read the homes
    for kind in ("Runtime", "State", "Logs", "Configuration"):
        assert service[f"{kind}Directory"] == "holdfast"
    assert service["ConfigurationDirectoryMode"] == "0700"  # the token
    for setting in ("NoNewPrivileges", "PrivateTmp", "ProtectControlGroups", "RestrictSUIDSGID"):
        assert service[setting] == "yes"


@pytest.mark.parametrize(
    "setting",
    [
        "RestrictNamespaces",  # bwrap makes namespaces
        "PrivateUsers",  # the agent must stay root to switch to nobody
        "SystemCallFilter",  # bwrap needs mount, pivot_root, unshare
        "ProtectKernelTunables",  # bwrap cannot mount a new /proc over a partly covered one
        "ProtectKernelLogs",
        "ProtectProc",
        "ProcSubset",
        "MemoryDenyWriteExecute",
    ],
)
def test_the_unit_leaves_out_what_breaks_the_detection_sandbox(setting: str) -> None:
    assert setting not in ini(SHIPPED["holdfast-agent.service"].read_text())["Service"]


def test_the_unit_names_the_installing_executable_and_escapes_a_percent_sign() -> None:
    text = service_linux.render_unit("/opt/100%/holdfast")
    assert ini(text)["Service"]["ExecStart"] == "/opt/100%%/holdfast run"
    assert text.count("ExecStart=") == 1


# XDG autostart


def test_the_tray_starts_with_every_graphical_session() -> None:
    entry = ini(SHIPPED["holdfast-tray.desktop"].read_text())["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Exec"] == "holdfast tray"
    assert entry["X-GNOME-Autostart-enabled"] == "true"
    assert entry.get("Hidden", "false") == "false"  # Hidden=true would disable it
    assert entry["Terminal"] == "false"


@pytest.mark.parametrize(
    ("executable", "exec_line"),
    [
        ("/usr/local/bin/holdfast", "/usr/local/bin/holdfast tray"),
        ("/opt/Hold fast/holdfast", '"/opt/Hold fast/holdfast" tray'),
        ("/opt/100%/holdfast", "/opt/100%%/holdfast tray"),
    ],
)
def test_the_tray_autostart_names_the_installing_executable(
    executable: str, exec_line: str
) -> None:
    entry = ini(service_linux.render_autostart(executable))["Desktop Entry"]
    assert entry["Exec"] == exec_line


# launchd


@pytest.mark.parametrize(("label", "command"), [("agent", "run"), ("tray", "tray")])
def test_launchd_runs_the_packaged_agent_and_restarts_it_only_after_a_crash(
    label: str, command: str
) -> None:
    plist = plistlib.loads(SHIPPED[f"com.holdfast.{label}.plist"].read_bytes())
    assert plist["Label"] == f"com.holdfast.{label}"
    assert plist["ProgramArguments"] == [service_macos.DEFAULT_EXECUTABLE, command]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}


def test_the_launch_daemon_logs_its_output_in_the_agents_log_folder() -> None:
    plist = plistlib.loads(SHIPPED["com.holdfast.agent.plist"].read_bytes())
    log = service_macos.layout(_system_target()).log
    assert str(log) == "/Library/Logs/Holdfast"
    assert Path(plist["StandardOutPath"]).parent == log
    assert Path(plist["StandardErrorPath"]).parent == log
    assert plist["StandardOutPath"] != plist["StandardErrorPath"]
    assert plist["ExitTimeOut"] == 30


def test_the_tray_launch_agent_loads_in_graphical_sessions_only() -> None:
    plist = plistlib.loads(SHIPPED["com.holdfast.tray.plist"].read_bytes())
    assert plist["LimitLoadToSessionType"] == "Aqua"


def test_a_plist_names_the_installing_executable_escaped_for_xml() -> None:
    text = service_macos.render_plist(service_macos.DAEMON, "/Applications/R&D <x>/holdfast")
    plist = plistlib.loads(text.encode())
    assert plist["ProgramArguments"] == ["/Applications/R&D <x>/holdfast", "run"]
    assert "<!--" in text  # the comments stay for the administrator


# Windows: the commands only; they run on Windows alone.


def test_windows_install_registers_an_automatic_service_running_the_agent() -> None:
    commands = service_windows.install_commands(WINDOWS_EXE, SYSTEM32)
    settings = [
        "binPath=",
        rf'"{WINDOWS_EXE}" service',  # the service host, not the console agent
        "start=",
        "auto",
        "DisplayName=",
        "Holdfast Backup Agent",
    ]
    sc = rf"{SYSTEM32}\sc.exe"
    create, config = commands[0], commands[1]
    assert list(create.argv) == [sc, "create", "HoldfastService", *settings]
    assert create.harmless == {1073}  # ERROR_SERVICE_EXISTS: a reinstall
    assert list(config.argv) == [sc, "config", "HoldfastService", *settings]
    assert not config.harmless


def test_windows_install_sets_recovery_actions_that_restart_the_agent() -> None:
    argvs = [list(c.argv) for c in service_windows.install_commands(WINDOWS_EXE, SYSTEM32)]
    sc = rf"{SYSTEM32}\sc.exe"
    failure = [sc, "failure", "HoldfastService", "reset=", "86400", "actions="]
    [actions] = [argv[len(failure)] for argv in argvs if argv[: len(failure)] == failure]
    assert set(actions.split("/")[0::2]) == {"restart"}
    assert [sc, "failureflag", "HoldfastService", "1"] in argvs


def test_windows_install_starts_the_tray_from_the_run_key_and_starts_the_service() -> None:
    argvs = [list(c.argv) for c in service_windows.install_commands(WINDOWS_EXE, SYSTEM32)]
    assert [
        rf"{SYSTEM32}\reg.exe",
        "add",
        r"HKLM\Software\Microsoft\Windows\CurrentVersion\Run",
        "/v",
        "Holdfast",
        "/t",
        "REG_SZ",
        "/d",
        rf'"{WINDOWS_EXE}" tray',
        "/f",
        "/reg:64",
    ] in argvs
    assert argvs[-1] == [rf"{SYSTEM32}\sc.exe", "start", "HoldfastService"]


def test_windows_conf_folder_is_restricted_to_system_and_administrators() -> None:
    command = service_windows.protect_conf_command(r"C:\ProgramData\Holdfast\conf", SYSTEM32)
    assert list(command.argv) == [
        rf"{SYSTEM32}\icacls.exe",
        r"C:\ProgramData\Holdfast\conf",
        "/inheritance:r",
        "/grant:r",
        "*S-1-5-18:(OI)(CI)F",
        "*S-1-5-32-544:(OI)(CI)F",
    ]


def test_windows_uninstall_stops_and_deletes_the_service_and_the_run_value() -> None:
    stop, delete, unregister = service_windows.uninstall_commands(SYSTEM32)
    assert list(stop.argv) == [rf"{SYSTEM32}\net.exe", "stop", "HoldfastService"]
    assert list(delete.argv) == [rf"{SYSTEM32}\sc.exe", "delete", "HoldfastService"]
    assert delete.harmless == {1060}  # ERROR_SERVICE_DOES_NOT_EXIST
    assert list(unregister.argv) == [
        rf"{SYSTEM32}\reg.exe",
        "delete",
        r"HKLM\Software\Microsoft\Windows\CurrentVersion\Run",
        "/v",
        "Holdfast",
        "/f",
        "/reg:64",
    ]


@pytest.mark.parametrize(
    ("platform", "executable"),
    [
        ("linux", "bin/holdfast"),
        ("linux", "/opt/$HOME/holdfast"),
        ("darwin", '/opt/"x"/holdfast'),
        ("win32", r"holdfast.exe"),
        ("win32", "/usr/bin/holdfast"),
        ("win32", 'C:\\Program Files\\"Holdfast"\\holdfast.exe'),
    ],
)
def test_install_refuses_an_executable_a_service_cannot_name(
    tmp_path: Path, platform: str, executable: str
) -> None:
    with pytest.raises(UsageError, match="holdfast executable"):
        install(CP_ARGS, root=tmp_path, platform=platform, executable=executable)
    assert not any(tmp_path.iterdir())


def test_systemd_counts_as_running_where_run_systemd_system_exists(tmp_path: Path) -> None:
    assert not service_linux.BACKEND.manager_running(tmp_path)
    (tmp_path / "run" / "systemd" / "system").mkdir(parents=True)
    assert service_linux.BACKEND.manager_running(tmp_path)


# The tray at install time, Linux: logind's sessions and the commands that open the tray


@pytest.mark.parametrize(
    "listing",
    [
        "      2 1000 alice seat0 tty2\n     c1  120 gdm   seat0 tty1\n",  # systemd 252
        "      2 1000 alice seat0 1715 user    tty2 no   -\n"
        "     c1  120 gdm   seat0 1022 greeter tty1 no   -\n",  # systemd 256
    ],
)
def test_session_ids_are_read_from_loginctl_list_sessions(listing: str) -> None:
    assert service_linux.session_ids(listing) == ["2", "c1"]
    assert service_linux.session_ids("No sessions.\n") == []


def show_session(**changed: str) -> str:
    values = {
        "Name": "alice",
        "User": "1000",
        "Class": "user",
        "Type": "x11",
        "Remote": "no",
        "Active": "yes",
        "Display": ":0",
    }
    return "".join(f"{key}={value}\n" for key, value in (values | changed).items())


def test_an_active_local_x11_or_wayland_session_is_where_the_tray_opens() -> None:
    assert service_linux.graphical_session(show_session()) == DesktopSession(
        "alice", 1000, display=":0"
    )
    wayland = service_linux.graphical_session(show_session(Type="wayland", Display=""))
    assert wayland == DesktopSession("alice", 1000)


@pytest.mark.parametrize(
    "changed",
    [
        {"Type": "tty"},
        {"Type": "unspecified"},  # ssh
        {"Remote": "yes"},
        {"Active": "no"},  # another user's turn at the screen
        {"Class": "greeter", "Name": "gdm"},  # the login screen
    ],
)
def test_other_sessions_get_no_tray(changed: dict[str, str]) -> None:
    assert service_linux.graphical_session(show_session(**changed)) is None


@pytest.mark.parametrize(
    ("cmdline", "is_tray"),
    [
        (["/usr/bin/holdfast", "tray"], True),
        (["/usr/bin/python3", "/opt/venv/bin/holdfast", "--home", "/h", "tray"], True),
        (["/usr/bin/holdfast", "run"], False),
        (["vim", "tray"], False),
    ],
)
def test_a_running_tray_is_told_by_its_command_line(cmdline: list[str], is_tray: bool) -> None:
    assert service_linux.is_tray_command(cmdline) is is_tray


def test_the_fallback_tray_is_detached_with_an_allow_listed_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool(shutil.which("setsid") is not None, "setsid is not installed (util-linux)")
    seen = tmp_path / "seen"
    fake = tmp_path / "Hold fast" / "holdfast"  # a space: the path is an argument, not script
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nenv > "{seen}.env"\necho "$$ $*" > "{seen}"\nexec sleep 60\n')
    fake.chmod(0o755)
    session = DesktopSession("alice", 1000, home="/home/alice", display=":1", xauthority="/x")
    systemd_run, runuser = service_linux.open_tray_commands(session, str(fake))
    assert systemd_run.argv[:4] == ("systemd-run", "--user", "--machine=alice@", "--collect")
    assert runuser.argv[:4] == ("runuser", "-u", "alice", "--")
    monkeypatch.setenv("HOLDFAST_SECRET_OF_THE_INSTALLER", "x")
    try:
        # What runuser runs as alice; captured output: it returns once nothing holds it open.
        subprocess.run(list(runuser.argv[4:]), capture_output=True, timeout=10, check=True)
    finally:
        deadline = time.monotonic() + 10
        while not (seen.exists() and seen.read_text().endswith("\n")):
            assert time.monotonic() < deadline, "the tray did not start"
            time.sleep(0.05)
        pid, args = seen.read_text().split(" ", 1)
        os.kill(int(pid), signal.SIGTERM)  # the fake tray this test started
    assert args == "tray\n"
    environment = dict(line.split("=", 1) for line in Path(f"{seen}.env").read_text().split())
    assert environment["DISPLAY"] == ":1"
    assert environment["XAUTHORITY"] == "/x"
    assert environment["DBUS_SESSION_BUS_ADDRESS"] == "unix:path=/run/user/1000/bus"
    assert "HOLDFAST_SECRET_OF_THE_INSTALLER" not in environment


def test_macos_names_the_console_owner_and_no_one_when_root_or_a_system_account_owns_it() -> None:
    import pwd

    uid = Path("/dev/console").stat().st_uid
    sessions = [s.user for s in service_macos.console_session()]
    if uid == 0:
        assert sessions == []  # the login window: no one at the screen
    else:
        name = pwd.getpwuid(uid).pw_name
        assert sessions == ([] if name.startswith("_") else [name])


# Windows: the service host, whose pywin32 half runs on Windows alone


@pytest.fixture
def signal_handlers() -> Iterator[None]:
    """The daemon takes SIGTERM and SIGINT in the main thread: give them back to pytest."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_the_service_host_imports_here_and_says_it_needs_windows(tmp_path: Path) -> None:
    assert not hasattr(service_windows_host, "HoldfastService")
    with pytest.raises(UsageError, match=r"Windows service host.*it needs Windows"):
        service_windows_host.main(AgentPaths.under(tmp_path))


@pytest.mark.usefixtures("signal_handlers")
def test_a_stop_asked_before_the_daemon_runs_ends_it_cleanly(tmp_path: Path) -> None:
    # The SCM may send its stop before the service thread has started the daemon.
    paths = AgentPaths.under(tmp_path)
    daemon = Daemon(paths)
    service_windows_host.request_stop(daemon)
    service_windows_host.run_daemon(daemon)  # returns: no error for the SCM to report
    assert "stopping on request; state saved" in paths.agent_log.read_text()
    assert not paths.pid_file.exists()


def test_a_daemon_that_fails_is_a_failure_for_the_scm(tmp_path: Path) -> None:
    class Failing(Daemon):
        def run(self) -> int:
            return 1

    with pytest.raises(AgentError, match="stopped with exit code 1"):
        service_windows_host.run_daemon(Failing(AgentPaths.under(tmp_path)))


@pytest.mark.usefixtures("signal_handlers")
def test_the_daemon_runs_in_the_service_thread_until_the_scm_stops_it(tmp_path: Path) -> None:
    paths = AgentPaths.under(tmp_path)
    daemon = Daemon(paths)
    failures: list[BaseException] = []

    def service_thread() -> None:  # as pywin32 calls SvcDoRun: not the main thread
        try:
            service_windows_host.run_daemon(daemon)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=service_thread)
    thread.start()
    deadline = time.monotonic() + 10
    while not paths.pid_file.exists() and thread.is_alive():
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.05)
    service_windows_host.request_stop(daemon)  # what SvcStop does
    thread.join(10)
    assert not thread.is_alive()
    if failures:
        raise failures[0]
    assert "stopping on request; state saved" in paths.agent_log.read_text()


def _system_target() -> Target:
    def never(argv: list[str]) -> None:
        raise AssertionError(argv)

    return Target(Path("/"), never, manage=False, executable=None)
