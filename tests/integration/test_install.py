"""`holdfast install` / `uninstall` against a scratch root folder, as an MDM would run them."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.deploy_args import read_properties_file
from agent.errors import AgentError, DeployArgsError
from agent.service import DesktopSession, install, uninstall
from tests.conftest import require_tool

TOKEN = "0fb12341-246b-448d-b07f-c6573ad5ad02"
CP_ARGS = (
    f"DEPLOYMENT_URL=https://backup.example.com:4285&DEPLOYMENT_POLICY_TOKEN={TOKEN}"
    "&SSL_WHITELIST=7746278a457e64737094c44eeb2bbc32357ece44"
)
EXECUTABLE = "/opt/holdfast/bin/holdfast"
UNIT = Path("etc/systemd/system/holdfast-agent.service")
AUTOSTART = Path("etc/xdg/autostart/holdfast-tray.desktop")
DEPLOY = Path("etc/holdfast/deploy.properties")
DATA = [Path("etc/holdfast"), Path("var/lib/holdfast"), Path("var/log/holdfast")]
MAC_DAEMON = Path("Library/LaunchDaemons/com.holdfast.agent.plist")
MAC_TRAY = Path("Library/LaunchAgents/com.holdfast.tray.plist")
MAC_BASE = Path("Library/Application Support/Holdfast")
MAC_LOGS = Path("Library/Logs/Holdfast")
REPO = Path(__file__).resolve().parents[2]
SHOWN = CP_ARGS + "&CP_SILENT=false"
ALICE = DesktopSession("alice", 1000, home="/home/alice", display=":0", xauthority="/x/auth")
BOB = DesktopSession("bob", 1001, home="/home/bob")  # Wayland: no X display known


class Recorder:
    """A runner that records each command, and fails those given in `fail` with their code."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail or {}

    def __call__(self, argv: list[str]) -> None:
        self.calls.append(argv)
        for word, code in self.fail.items():
            if word in argv:
                raise subprocess.CalledProcessError(code, argv)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if not p.is_dir()}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


def linux_install(
    root: Path,
    *,
    runner: Recorder | None = None,
    executable: str | None = None,
    service_manager: bool | None = None,
) -> list[str]:
    return install(
        CP_ARGS,
        root=root,
        platform="linux",
        runner=runner,
        executable=executable,
        service_manager=service_manager,
    )


# Linux


def test_install_writes_the_arguments_the_unit_and_the_tray_autostart(root: Path) -> None:
    lines = linux_install(root, executable=EXECUTABLE)
    assert files_under(root) == {DEPLOY, UNIT, AUTOSTART}
    assert mode(root / "etc/holdfast") == 0o700
    assert mode(root / DEPLOY) == 0o600
    assert read_properties_file(root / DEPLOY).token == TOKEN
    assert mode(root / UNIT) == 0o644
    assert f"ExecStart={EXECUTABLE} run\n" in (root / UNIT).read_text()
    assert mode(root / AUTOSTART) == 0o644
    assert f"Exec={EXECUTABLE} tray\n" in (root / AUTOSTART).read_text()
    said = "\n".join(lines)
    assert str(root / UNIT) in said
    assert "not told" in said
    assert TOKEN not in said


def test_install_without_an_executable_runs_the_packaged_one(root: Path) -> None:
    linux_install(root)
    assert (root / UNIT).read_bytes() == (
        REPO / "service_units/linux/holdfast-agent.service"
    ).read_bytes()
    assert (root / AUTOSTART).read_bytes() == (
        REPO / "service_units/linux/holdfast-tray.desktop"
    ).read_bytes()


def test_install_twice_rewrites_the_same_files(root: Path) -> None:
    linux_install(root, executable=EXECUTABLE)
    first = {path: (root / path).read_bytes() for path in files_under(root)}
    linux_install(root, executable=EXECUTABLE)
    assert {path: (root / path).read_bytes() for path in files_under(root)} == first
    assert mode(root / DEPLOY) == 0o600


def test_install_again_with_new_arguments_replaces_them(root: Path) -> None:
    linux_install(root)
    other = "1fb12341-246b-448d-b07f-c6573ad5ad02"
    install(CP_ARGS.replace(TOKEN, other), root=root, platform="linux")
    assert read_properties_file(root / DEPLOY).token == other


@pytest.mark.parametrize(
    ("cp_args", "key"),
    [
        (CP_ARGS.replace("https://", "http://"), "DEPLOYMENT_URL"),
        (CP_ARGS.replace(TOKEN, "not-a-uuid"), "DEPLOYMENT_POLICY_TOKEN"),
        ("DEPLOYMENT_URL=https://backup.example.com:4285", "DEPLOYMENT_POLICY_TOKEN"),
    ],
)
def test_bad_installer_arguments_write_nothing(root: Path, cp_args: str, key: str) -> None:
    runner = Recorder()
    with pytest.raises(DeployArgsError) as refused:
        install(cp_args, root=root, platform="linux", runner=runner, service_manager=True)
    assert refused.value.key == key
    assert refused.value.exit_code == 2
    assert not any(root.iterdir())
    assert runner.calls == []


def test_unknown_installer_arguments_are_reported_not_refused(root: Path) -> None:
    lines = install(CP_ARGS + "&FAVOURITE_COLOUR=blue", root=root, platform="linux")
    assert any(line.startswith("Warning:") and "FAVOURITE_COLOUR" in line for line in lines)
    assert (root / DEPLOY).exists()


def test_the_service_manager_is_left_alone_unless_it_runs(root: Path) -> None:
    runner = Recorder()
    linux_install(root, runner=runner)  # detection: only "/" has a service manager to tell
    linux_install(root, runner=runner, service_manager=False)
    uninstall(purge=False, root=root, platform="linux", runner=runner)
    assert runner.calls == []


def test_install_enables_and_starts_the_service_when_systemd_runs(root: Path) -> None:
    runner = Recorder()
    lines = linux_install(root, runner=runner, service_manager=True)
    assert runner.calls == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "holdfast-agent.service"],
    ]
    assert "Ran `systemctl enable --now holdfast-agent.service`." in lines


def test_reinstall_restarts_the_service_only_when_its_unit_changed(root: Path) -> None:
    linux_install(root, service_manager=True, runner=Recorder())
    same = Recorder()
    linux_install(root, service_manager=True, runner=same)
    assert ["systemctl", "restart", "holdfast-agent.service"] not in same.calls
    moved = Recorder()
    linux_install(root, service_manager=True, runner=moved, executable=EXECUTABLE)
    assert moved.calls[-1] == ["systemctl", "restart", "holdfast-agent.service"]


def test_a_failed_systemctl_is_an_error_naming_the_command(root: Path) -> None:
    with pytest.raises(AgentError, match=r"`systemctl enable --now holdfast-agent.service` failed"):
        linux_install(root, service_manager=True, runner=Recorder(fail={"enable": 1}))


def test_uninstall_removes_the_service_and_keeps_settings_state_and_logs(root: Path) -> None:
    linux_install(root)
    (root / "var/lib/holdfast").mkdir(parents=True)
    (root / "var/lib/holdfast/identity").write_text("device")
    (root / "var/log/holdfast").mkdir(parents=True)
    (root / "var/log/holdfast/agent.log").write_text("log")
    lines = uninstall(purge=False, root=root, platform="linux")
    assert files_under(root) == {
        DEPLOY,
        Path("var/lib/holdfast/identity"),
        Path("var/log/holdfast/agent.log"),
    }
    assert any("--purge" in line for line in lines)


def test_uninstall_tells_systemd_to_stop_and_forget_the_service(root: Path) -> None:
    linux_install(root)
    runner = Recorder()
    uninstall(purge=False, root=root, platform="linux", runner=runner, service_manager=True)
    assert runner.calls == [
        ["systemctl", "disable", "--now", "holdfast-agent.service"],
        ["systemctl", "daemon-reload"],
    ]


def test_uninstall_twice_says_it_is_not_installed_and_succeeds(root: Path) -> None:
    linux_install(root)
    uninstall(purge=False, root=root, platform="linux")
    runner = Recorder()
    lines = uninstall(purge=False, root=root, platform="linux", runner=runner, service_manager=True)
    assert "The Holdfast service is not installed; nothing to remove." in lines
    assert runner.calls == []


def test_uninstall_purge_removes_every_file_of_the_agent(root: Path) -> None:
    linux_install(root)
    for folder in DATA[1:]:
        (root / folder).mkdir(parents=True)
        (root / folder / "file").write_text("x")
    lines = uninstall(purge=True, root=root, platform="linux")
    assert files_under(root) == set()
    for folder in DATA:
        assert not (root / folder).exists()
        assert f"Removed {root / folder}." in lines


def test_uninstall_without_systemd_removes_the_link_that_enabled_the_unit(root: Path) -> None:
    linux_install(root)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "holdfast-agent.service").symlink_to("../holdfast-agent.service")
    uninstall(purge=False, root=root, platform="linux")
    assert not (wants / "holdfast-agent.service").is_symlink()


@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_without_root_the_system_is_left_alone_and_the_refusal_says_sudo(command: str) -> None:
    require_tool(os.geteuid() == 0, "switching to nobody needs root")
    nobody = pwd.getpwnam("nobody")
    before = {
        p: p.exists() for p in (Path("/etc/holdfast"), Path("/") / UNIT, Path("/") / AUTOSTART)
    }
    call = (
        f"install({CP_ARGS!r}, runner=ran)"
        if command == "install"
        else "uninstall(purge=True, runner=ran)"
    )
    # Everything is imported first: the interpreter's own files may not be readable by nobody.
    code = (
        "import os, sys\n"
        "import agent.service, agent.service_linux\n"
        "from agent.errors import AgentError\n"
        "from agent.service import install, uninstall\n"
        "def ran(argv): sys.exit('ran ' + ' '.join(argv))\n"
        f"os.setgroups([]); os.setgid({nobody.pw_gid}); os.setuid({nobody.pw_uid})\n"
        "try:\n"
        f"    {call}\n"
        "except AgentError as exc:\n"
        "    print(exc.message, file=sys.stderr); sys.exit(exc.exit_code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 4, result.stderr
    assert "needs root: run it again with sudo" in result.stderr
    assert {p: p.exists() for p in before} == before


# The tray at install time: CP_SILENT=false opens it in the sessions already open


def sessions_of(*found: DesktopSession) -> Callable[[], list[DesktopSession]]:
    return lambda: list(found)


def never_asked() -> list[DesktopSession]:
    raise AssertionError("the graphical sessions were looked for")


def tray_install(
    root: Path,
    runner: Recorder,
    cp_args: str = SHOWN,
    *,
    sessions: Callable[[], list[DesktopSession]] = never_asked,
    platform: str = "linux",
    service_manager: bool = True,
) -> list[str]:
    return install(
        cp_args,
        root=root,
        platform=platform,
        runner=runner,
        executable=None if platform == "win32" else EXECUTABLE,
        service_manager=service_manager,
        sessions=sessions,
    )


def systemd_run(user: str, *setenv: str) -> list[str]:
    return [
        "systemd-run",
        "--user",
        f"--machine={user}@",
        "--collect",
        "--quiet",
        "--unit=holdfast-tray-install",
        *setenv,
        EXECUTABLE,
        "tray",
    ]


def test_cp_silent_false_opens_the_tray_in_each_session_after_starting_the_service(
    root: Path,
) -> None:
    runner = Recorder()
    lines = tray_install(root, runner, sessions=sessions_of(ALICE, BOB))
    assert runner.calls[:2] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "holdfast-agent.service"],
    ]
    assert runner.calls[2:] == [systemd_run("alice", "--setenv=DISPLAY=:0"), systemd_run("bob")]
    assert lines[-2].startswith("Opened the tray for alice: ran `systemd-run --user")
    assert lines[-1].startswith("Opened the tray for bob: ran `systemd-run --user")


def test_without_systemd_run_the_tray_opens_through_runuser_detached(root: Path) -> None:
    runner = Recorder(fail={"systemd-run": 1})
    lines = tray_install(root, runner, sessions=sessions_of(ALICE))
    assert runner.calls[-1][:6] == ["runuser", "-u", "alice", "--", "env", "-i"]
    assert "DISPLAY=:0" in runner.calls[-1]
    assert "XAUTHORITY=/x/auth" in runner.calls[-1]
    assert runner.calls[-1][-2:] == ['exec "$0" tray </dev/null >/dev/null 2>&1', EXECUTABLE]
    assert lines[-1].startswith("Opened the tray for alice: ran `runuser -u alice -- env -i")


def test_a_tray_that_cannot_open_is_a_line_not_a_failed_install(root: Path) -> None:
    runner = Recorder(fail={"systemd-run": 1, "runuser": 1})
    lines = tray_install(root, runner, sessions=sessions_of(ALICE, BOB))
    tried = " ".join(systemd_run("alice", "--setenv=DISPLAY=:0"))
    assert lines[-2].startswith(f"Could not open the tray for alice: `{tried}` failed with ")
    assert "; `runuser -u alice -- env -i " in lines[-2]
    assert lines[-2].endswith("` failed with exit code 1; it opens at the next login.")
    assert lines[-1] == (
        f"Could not open the tray for bob: `{' '.join(systemd_run('bob'))}` failed with exit "
        "code 1; it opens at the next login."
    )
    assert "holdfast-agent.service is enabled and running; `holdfast status` shows where it " in (
        "\n".join(lines)
    )


def test_sessions_that_cannot_be_found_are_a_line_not_a_failed_install(root: Path) -> None:
    def no_logind() -> list[DesktopSession]:
        raise AgentError("`loginctl list-sessions --no-legend` failed: Host is down")

    lines = tray_install(root, Recorder(), sessions=no_logind)
    assert lines[-1] == (
        "Could not find the graphical sessions to open the tray in: `loginctl list-sessions "
        "--no-legend` failed: Host is down; it opens at each user's next login."
    )


def test_a_tray_already_open_is_not_opened_twice(root: Path) -> None:
    runner = Recorder()
    open_already = DesktopSession("alice", 1000, display=":0", tray_open=True)
    lines = tray_install(root, runner, sessions=sessions_of(open_already))
    assert not any(argv[0] in ("systemd-run", "runuser") for argv in runner.calls)
    assert lines[-1] == "The tray is already open for alice."


@pytest.mark.parametrize(
    ("cp_args", "service_manager"),
    [
        (CP_ARGS, True),  # CP_SILENT=true, the default
        (CP_ARGS + "&CP_SILENT=true", True),
        (SHOWN + "&DEVICE_CLOAKED=true", True),
        (SHOWN, False),  # an image or a chroot: no one is at its screen
    ],
)
@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_no_tray_opens_when_silent_cloaked_or_not_live(
    root: Path, platform: str, cp_args: str, service_manager: bool
) -> None:
    runner = Recorder()
    lines = tray_install(root, runner, cp_args, platform=platform, service_manager=service_manager)
    assert not any(argv[0] in ("systemd-run", "runuser") for argv in runner.calls)
    assert ["launchctl", "bootstrap", "gui/501"] not in [argv[:3] for argv in runner.calls]
    assert not any("the tray for" in line for line in lines)


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_a_cloaked_device_keeps_the_tray_autostart_and_says_the_tray_stays_hidden(
    root: Path, platform: str
) -> None:
    lines = tray_install(root, Recorder(), SHOWN + "&DEVICE_CLOAKED=true", platform=platform)
    assert any(line.startswith("DEVICE_CLOAKED=true: the tray's autostart") for line in lines)
    if platform == "linux":
        assert (root / AUTOSTART).exists()
    if platform == "darwin":
        assert (root / MAC_TRAY).exists()


def test_macos_opens_the_tray_agent_in_the_users_gui_domain(root: Path) -> None:
    alice = DesktopSession("alice", 501, home="/Users/alice")
    runner = Recorder()
    lines = tray_install(root, runner, platform="darwin", sessions=sessions_of(alice))
    assert runner.calls[-1] == ["launchctl", "bootstrap", "gui/501", str(root / MAC_TRAY)]
    assert lines[-1] == (
        f"Opened the tray for alice: ran `launchctl bootstrap gui/501 {root / MAC_TRAY}`."
    )
    # Loaded already (since alice's login): started where it is.
    again = Recorder(fail={"gui/501": 5})
    lines = tray_install(root, again, platform="darwin", sessions=sessions_of(alice))
    assert again.calls[-1] == ["launchctl", "kickstart", "gui/501/com.holdfast.tray"]
    assert lines[-1].startswith("Opened the tray for alice: ran `launchctl kickstart")


def test_windows_opens_the_tray_at_the_next_sign_in_only(root: Path) -> None:
    runner = Recorder()
    lines = tray_install(root, runner, platform="win32", sessions=never_asked)
    assert "CP_SILENT=false: the tray opens at each user's next sign-in" in lines[-1]
    assert runner.calls[-1][1:] == ["start", "HoldfastService"]


# macOS, in the same scratch root


def mac_install(
    root: Path,
    *,
    runner: Recorder | None = None,
    executable: str | None = None,
    service_manager: bool | None = None,
) -> list[str]:
    return install(
        CP_ARGS,
        root=root,
        platform="darwin",
        runner=runner,
        executable=executable,
        service_manager=service_manager,
    )


def test_macos_install_writes_the_launchd_plists_and_the_arguments(root: Path) -> None:
    mac_install(root, executable=EXECUTABLE)
    assert files_under(root) == {MAC_DAEMON, MAC_TRAY, MAC_BASE / "conf/deploy.properties"}
    assert mode(root / MAC_BASE / "conf/deploy.properties") == 0o600
    assert mode(root / MAC_BASE / "conf") == 0o700
    assert mode(root / MAC_DAEMON) == 0o644
    assert f"<string>{EXECUTABLE}</string>" in (root / MAC_DAEMON).read_text()
    assert (root / MAC_LOGS).is_dir()  # launchd opens its output files there


def test_macos_install_bootstraps_the_daemon_and_reloads_it_on_reinstall(root: Path) -> None:
    first = Recorder()
    mac_install(root, runner=first, service_manager=True)
    assert first.calls == [
        ["launchctl", "enable", "system/com.holdfast.agent"],
        ["launchctl", "bootstrap", "system", str(root / MAC_DAEMON)],
    ]
    # The old job may not be loaded any more: its bootout failing is fine.
    again = Recorder(fail={"bootout": 3})
    mac_install(root, runner=again, service_manager=True)
    assert again.calls == [["launchctl", "bootout", "system/com.holdfast.agent"], *first.calls]


def test_macos_uninstall_unloads_removes_and_purges(root: Path) -> None:
    mac_install(root)
    runner = Recorder()
    uninstall(purge=False, root=root, platform="darwin", runner=runner, service_manager=True)
    assert runner.calls == [["launchctl", "bootout", "system/com.holdfast.agent"]]
    assert files_under(root) == {MAC_BASE / "conf/deploy.properties"}
    lines = uninstall(purge=True, root=root, platform="darwin")
    assert "The Holdfast service is not installed; nothing to remove." in lines
    assert not (root / MAC_BASE).exists()
    assert not (root / MAC_LOGS).exists()


# Windows: the files in the scratch root, the commands to a recorder


def test_windows_install_protects_conf_before_writing_the_token(root: Path) -> None:
    runner = Recorder()
    install(CP_ARGS, root=root, platform="win32", runner=runner, service_manager=True)
    conf = root / "ProgramData/Holdfast/conf"
    assert (conf / "deploy.properties").exists()
    assert runner.calls[0][0].endswith("icacls.exe")
    assert runner.calls[0][1] == str(conf)
    assert [argv[1] for argv in runner.calls[1:3]] == ["create", "config"]


def test_windows_uninstall_of_nothing_says_so(root: Path) -> None:
    runner = Recorder(fail={"/v": 1, "stop": 2, "delete": 1060})
    lines = uninstall(purge=True, root=root, platform="win32", runner=runner, service_manager=True)
    assert lines == ["The Holdfast service is not installed; nothing to remove."]
    assert len(runner.calls) == 3


def test_install_on_an_unsupported_system_is_an_error(root: Path) -> None:
    with pytest.raises(AgentError, match="not supported on freebsd14"):
        install(CP_ARGS, root=root, platform="freebsd14")
