"""The detection sandbox: how each OS's command is built, what the script gets, who it runs as."""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import logs, sandbox, sandbox_windows
from agent.detection import DetectionScript, run_script
from agent.errors import DetectionError
from agent.sandbox import (
    SCRIPT_PATH,
    Isolation,
    Limits,
    SandboxSettings,
    bwrap_command,
    environment,
    plan,
    resolve_account,
    sandbox_exec_command,
    sandbox_exec_profile,
)
from tests.conftest import require_tool

BWRAP = shutil.which("bwrap")
SCRATCH = "/tmp/holdfast-detect-abc123"
ARGV = ["/bin/bash", f"{SCRATCH}/detect_user.sh"]
ENV = environment(SCRATCH, "C.UTF-8")


def script_of(text: str) -> DetectionScript:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return DetectionScript("linux", "detect_user.sh", ("/bin/bash",), text, digest)


def values(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


@pytest.fixture
def agent_log() -> Iterator[list[str]]:
    """What the sandbox says in agent.log, with its say-it-once memory cleared."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(f"{record.levelname} {record.getMessage()}")

    handler, logger = Collect(), logging.getLogger(logs.LOGGER)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    sandbox._announced.clear()
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(level)


# bubblewrap


def test_bwrap_runs_the_script_with_no_network_a_read_only_root_and_private_tmp() -> None:
    command = bwrap_command("/usr/bin/bwrap", ARGV, scratch=SCRATCH, hidden=[], env=ENV)
    joined = " ".join(command)
    assert command[0] == "/usr/bin/bwrap"
    for option in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv"):
        assert option in command
    assert "--share-net" not in command
    assert "--ro-bind / / --dev /dev --proc /proc --tmpfs /tmp" in joined
    assert f"--bind {SCRATCH} {SCRATCH} --chdir {SCRATCH}" in joined
    # The scratch folder is bound after the private /tmp, or the tmpfs would cover it.
    assert joined.index("--tmpfs /tmp") < joined.index(f"--bind {SCRATCH}")
    assert command[-3:] == ["--", *ARGV]


def test_bwrap_never_maps_the_script_to_root_with_uid_options() -> None:
    command = bwrap_command("/usr/bin/bwrap", ARGV, scratch=SCRATCH, hidden=[], env=ENV)
    assert "--uid" not in command
    assert "--gid" not in command


def test_bwrap_covers_the_agents_folders_with_empty_read_only_ones() -> None:
    hidden = ["/etc/holdfast", "/var/lib/holdfast"]
    joined = " ".join(bwrap_command("bwrap", ARGV, scratch=SCRATCH, hidden=hidden, env=ENV))
    for folder in hidden:
        assert f"--tmpfs {folder} --remount-ro {folder}" in joined


def test_bwrap_sets_exactly_the_allow_listed_environment() -> None:
    command = bwrap_command("bwrap", ARGV, scratch=SCRATCH, hidden=[], env=ENV)
    set_env = {command[i + 1]: command[i + 2] for i, arg in enumerate(command) if arg == "--setenv"}
    assert set_env == ENV


# sandbox-exec (macOS)


def test_sandbox_exec_profile_denies_network_and_writes_outside_the_scratch_folder() -> None:
    profile = sandbox_exec_profile(hidden_count=2)
    assert "(deny network*)" in profile
    assert "(deny file-write*)" in profile
    assert '(allow file-write* (subpath (param "SCRATCH"))' in profile
    assert '(deny file-read* (subpath (param "HIDDEN_1")))' in profile
    # Later rules win: the scratch folder's exception must come after the general denial.
    assert profile.index("(deny file-write*)") < profile.index("(allow file-write*")


def test_sandbox_exec_command_passes_real_paths_as_parameters(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    command = sandbox_exec_command(
        "/usr/bin/sandbox-exec", ARGV, scratch=str(link), hidden=["/etc/holdfast"]
    )
    assert command[:2] == ["/usr/bin/sandbox-exec", "-p"]
    assert command[2] == sandbox_exec_profile(1)
    assert f"SCRATCH={tmp_path.resolve()}" in command
    assert "HIDDEN_0=/etc/holdfast" in command
    assert command[-2:] == ARGV


# Windows


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            r"C:\ProgramData\Holdfast\scratch\detect.ps1",
            [
                "powershell.exe",
                "-NoLogo",
                "-NoProfile",
                "-NonInteractive",
                "-ExecutionPolicy",
                "Bypass",
                "-File",
                r"C:\ProgramData\Holdfast\scratch\detect.ps1",
            ],
        ),
        (r"C:\t\detect.BAT", ["cmd.exe", "/d", "/q", "/c", r"C:\t\detect.BAT"]),
        (r"C:\t\detect.cmd", ["cmd.exe", "/d", "/q", "/c", r"C:\t\detect.cmd"]),
        (r"C:\t\detect.py", ["py.exe", "-3", r"C:\t\detect.py"]),
    ],
)
def test_windows_command_is_fixed_for_powershell_and_batch_files(
    path: str, expected: list[str]
) -> None:
    # Whatever the policy's interpreter says, .ps1 and .bat get the safe flags.
    interpreter = ["py.exe", "-3"] if path.endswith(".py") else ["powershell.exe"]
    assert sandbox_windows.command(interpreter, path) == expected


def test_windows_command_line_quotes_paths_with_spaces() -> None:
    line = sandbox_windows.command_line(["cmd.exe", "/d", "/q", "/c", r"C:\Temp dir\d.bat"])
    assert line == r'cmd.exe /d /q /c "C:\Temp dir\d.bat"'


def test_windows_job_kills_on_close_and_limits_processes_memory_and_cpu() -> None:
    job = sandbox_windows.job_limits(Limits.for_run(60, 0))
    assert job.flags == 0x2000 | 0x8 | 0x200 | 0x2 | 0x400
    assert job.active_processes == 64
    assert job.job_memory == 1024**3
    assert job.process_user_time_100ns == 65 * 10_000_000


def test_windows_environment_is_allow_listed_and_its_block_is_sorted() -> None:
    env = sandbox_windows.environment(r"C:\scratch", r"C:\Windows")
    assert env["TEMP"] == env["TMP"] == env["USERPROFILE"] == r"C:\scratch"
    assert env["PATH"].startswith(r"C:\Windows\System32;")
    assert not {"USERNAME", "HOLDFAST_HOME", "HTTPS_PROXY"} & set(env)
    block = sandbox_windows.environment_block({"b": "2", "A": "1"})
    assert block == "A=1\0b=2\0\0"


# What every run gets


def test_environment_is_the_allow_list_and_nothing_of_the_agents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOLDFAST_TOKEN", "0fb12341-secret")
    env = environment(SCRATCH, "de_DE.UTF-8")
    assert env == {"PATH": SCRIPT_PATH, "LANG": "de_DE.UTF-8", "HOME": SCRATCH, "TMPDIR": SCRATCH}


def test_rlimits_for_a_run() -> None:
    limits = Limits.for_run(60, account_processes=10)
    assert dict((name, (soft, hard)) for name, soft, hard in limits.rlimits("linux")) == {
        "RLIMIT_CPU": (65, 66),
        "RLIMIT_AS": (1024**3, 1024**3),
        "RLIMIT_FSIZE": (16 * 1024**2, 16 * 1024**2),
        "RLIMIT_NOFILE": (256, 256),
        # 64 processes on top of those the (shared) account already runs
        "RLIMIT_NPROC": (74, 74),
        "RLIMIT_CORE": (0, 0),
    }


def test_macos_gets_no_address_space_limit_it_would_not_enforce() -> None:
    names = [name for name, _soft, _hard in Limits.for_run(1, 0).rlimits("darwin")]
    assert "RLIMIT_AS" not in names
    assert "RLIMIT_NPROC" in names


@pytest.mark.parametrize("layer", ["bubblewrap", "rlimits-only"])
def test_the_limits_reach_the_script(layer: str) -> None:
    if layer == "bubblewrap":
        require_tool(BWRAP is not None, "bubblewrap is not installed (Debian package bubblewrap)")
    bwrap = BWRAP if layer == "bubblewrap" else None
    text = (
        'echo "CPU=$(ulimit -t)"; echo "FILES=$(ulimit -n)"; echo "SIZE=$(ulimit -f)"\n'
        'echo "CORE=$(ulimit -c)"; echo "MEM=$(ulimit -v)"\n'
    )
    run = run_script(script_of(text), timeout_s=7, sandbox=SandboxSettings(bwrap=bwrap))
    assert values(run.stdout) == {
        "CPU": "12",
        "FILES": "256",
        "SIZE": str(16 * 1024**2 // 1024),  # bash counts 1024-byte blocks
        "CORE": "0",
        "MEM": str(1024**3 // 1024),
    }


# The account


def test_root_agent_runs_scripts_as_the_configured_unprivileged_account() -> None:
    account = resolve_account("nobody", euid=0)
    entry = pwd.getpwnam("nobody")
    assert (account.name, account.uid, account.gid, account.switch) == (
        "nobody",
        entry.pw_uid,
        entry.pw_gid,
        True,
    )


@pytest.mark.parametrize(
    ("name", "problem"), [("holdfast-no-such-user", "does not exist"), ("root", "privileged")]
)
def test_unusable_detection_account_is_refused_by_name(name: str, problem: str) -> None:
    with pytest.raises(DetectionError) as caught:
        resolve_account(name, euid=0)
    assert caught.value.code == "account_unusable"
    assert name in caught.value.message
    assert problem in caught.value.message


def test_agent_that_is_not_root_runs_scripts_as_itself() -> None:
    account = resolve_account("nobody", euid=4242)
    assert (account.uid, account.switch) == (4242, False)


def test_script_runs_as_the_account_without_supplementary_groups() -> None:
    require_tool(os.geteuid() == 0, "switching to the detection account needs root")
    run = run_script(script_of('echo "UID=$(id -u)"; echo "GROUPS=$(id -G)"\n'), timeout_s=5)
    entry = pwd.getpwnam("nobody")
    assert values(run.stdout) == {"UID": str(entry.pw_uid), "GROUPS": str(entry.pw_gid)}


# Choosing the layer


def test_bubblewrap_is_chosen_and_said_once(agent_log: list[str]) -> None:
    require_tool(BWRAP is not None, "bubblewrap is not installed (Debian package bubblewrap)")
    for _ in range(3):
        assert plan(SandboxSettings(bwrap=BWRAP)).isolation is Isolation.BUBBLEWRAP
    assert len(agent_log) == 1
    assert agent_log[0].startswith("INFO detection sandbox: bubblewrap")


def test_without_bubblewrap_detection_runs_weaker_and_says_so_once(agent_log: list[str]) -> None:
    for _ in range(3):
        assert plan(SandboxSettings(bwrap=None)).isolation is Isolation.RLIMITS_ONLY
    assert len(agent_log) == 1
    assert agent_log[0].startswith("WARNING bubblewrap not found")
    assert "detection runs with rlimits and" in agent_log[0]


@pytest.mark.parametrize(
    ("bwrap", "reason"),
    [(None, "bubblewrap not found"), ("/bin/false", "bubblewrap cannot make its sandbox here")],
)
def test_policy_requiring_a_strong_sandbox_refuses_to_run_weaker(
    bwrap: str | None, reason: str
) -> None:
    with pytest.raises(DetectionError) as caught:
        plan(SandboxSettings(bwrap=bwrap, require_strong=True))
    assert caught.value.code == "sandbox_unavailable"
    assert reason in caught.value.message
    assert "require_strong_sandbox" in caught.value.message


def test_macos_uses_sandbox_exec_where_it_exists() -> None:
    found = plan(SandboxSettings(sandbox_exec="/usr/bin/sandbox-exec"), platform="darwin")
    missing = plan(SandboxSettings(sandbox_exec=None), platform="darwin")
    assert (found.isolation, missing.isolation) == (Isolation.SANDBOX_EXEC, Isolation.RLIMITS_ONLY)


def test_windows_uses_a_job_object() -> None:
    assert plan(SandboxSettings(), platform="win32").isolation is Isolation.JOB_OBJECT
