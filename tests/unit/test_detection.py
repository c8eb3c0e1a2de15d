"""User detection: what a detection script may print, and how the agent runs it."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shlex
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.detection import (
    SCRIPT_PATH,
    DetectionError,
    DetectionScript,
    detect,
    parse_output,
    run_script,
)
from agent.errors import AgentError

BASH = ("/bin/bash",)
ALICE = "AGENT_USERNAME=alice@example.com\nAGENT_USER_HOME=/home/alice\n"
# What bash exports by itself, on top of the environment the agent gives the script.
BASH_OWN = {"PWD", "SHLVL", "_", "OLDPWD"}


def script_of(
    text: str, *, interpreter: tuple[str, ...] = BASH, filename: str = "detect_user.sh"
) -> DetectionScript:
    return DetectionScript(
        os="linux",
        filename=filename,
        interpreter=interpreter,
        script=text,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def variables(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def gone(pid: int, within_s: float = 2.0) -> bool:
    """True once `pid` has exited (a zombie waiting for a reaper counts as exited)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    """A file a script writes a pid to; that process is killed at teardown if still there."""
    path = tmp_path / "spawned.pid"
    yield path
    with contextlib.suppress(ValueError, OSError):
        os.kill(int(path.read_text()), signal.SIGKILL)


def policy_detection(**changes: Any) -> dict[str, Any]:
    text = "echo AGENT_USERNAME=alice\n"
    document: dict[str, Any] = {
        "os": "linux",
        "filename": "detect_user.sh",
        "interpreter": ["/usr/bin/env", "bash"],
        "script": text,
        "sha256": hashlib.sha256(text.encode()).hexdigest().upper(),
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not ...}


# The policy's detection object


def test_policy_detection_object_becomes_a_detection_script() -> None:
    script = DetectionScript.from_policy(policy_detection())
    assert script.filename == "detect_user.sh"
    assert script.interpreter == ("/usr/bin/env", "bash")
    assert script.sha256 == script.sha256.lower()


@pytest.mark.parametrize(
    "changes",
    [
        {"script": ...},
        {"script": None},
        {"interpreter": []},
        {"interpreter": "/bin/bash"},
        {"interpreter": ["/bin/bash", 3]},
        {"sha256": "abc123"},
        {"filename": "../../etc/cron.d/evil"},
        {"filename": ".."},
        {"os": 1},
    ],
)
def test_malformed_policy_detection_object_is_policy_invalid(changes: dict[str, Any]) -> None:
    with pytest.raises(DetectionError) as caught:
        DetectionScript.from_policy(policy_detection(**changes))
    assert caught.value.code == "policy_invalid"
    assert isinstance(caught.value, AgentError)


# What the script prints (CONTRACT section 3)


def test_agent_prefix_gives_the_user_and_home() -> None:
    assert parse_output(ALICE) == ("alice@example.com", "/home/alice")


def test_code42_prefix_gives_the_user_and_home() -> None:
    assert parse_output("C42_USERNAME=bob\nC42_USER_HOME=/Users/bob\n") == ("bob", "/Users/bob")


def test_other_lines_are_ignored_crlf_is_tolerated_and_values_are_stripped() -> None:
    output = (
        "Detecting the console user\r\n"
        "DEBUG=1\r\n"
        "C42_USERNAME =  carol \r\n"
        "console user is carol, home=/Users/carol\r\n"
        "C42_USER_HOME=/Users/carol\r\n"
    )
    assert parse_output(output) == ("carol", "/Users/carol")


def test_repeated_key_takes_the_last_value() -> None:
    output = "AGENT_USERNAME=first\nAGENT_USER_HOME=/home/first\nAGENT_USERNAME=second\n"
    assert parse_output(output) == ("second", "/home/first")


@pytest.mark.parametrize(
    "output", ["", "\n\n", "no console user, will retry\n", "AGENT_USERNAME=\nAGENT_USER_HOME=\n"]
)
def test_output_without_a_user_means_no_user_yet(output: str) -> None:
    assert parse_output(output) == (None, None)


@pytest.mark.parametrize(
    "output", ["AGENT_USERNAME=alice\n", "C42_USER_HOME=/Users/alice\n", "AGENT_USERNAME=a\n\n"]
)
def test_user_without_home_or_home_without_user_is_incomplete(output: str) -> None:
    with pytest.raises(DetectionError) as caught:
        parse_output(output)
    assert caught.value.code == "incomplete_output"


@pytest.mark.parametrize("username", ["a" * 257, "alice\tsmith", "alice\x1b[31m"])
def test_username_that_is_too_long_or_not_printable_is_invalid(username: str) -> None:
    with pytest.raises(DetectionError) as caught:
        parse_output(f"AGENT_USERNAME={username}\nAGENT_USER_HOME=/home/a\n")
    assert caught.value.code == "invalid_username"


def test_username_of_256_printable_characters_is_accepted() -> None:
    assert parse_output(f"AGENT_USERNAME={'é' * 256}\nAGENT_USER_HOME=/home/a\n")[0] == "é" * 256


@pytest.mark.parametrize("home", ["home/alice", "~alice", "C:Users\\alice", "\\Users\\alice"])
def test_home_that_is_not_absolute_is_invalid(home: str) -> None:
    with pytest.raises(DetectionError) as caught:
        parse_output(f"AGENT_USERNAME=alice\nAGENT_USER_HOME={home}\n")
    assert caught.value.code == "invalid_home"


@pytest.mark.parametrize(
    "home", ["/Users/alice", "C:\\Users\\alice", "c:/Users/alice", "\\\\files\\homes\\alice"]
)
def test_posix_windows_and_unc_homes_are_accepted(home: str) -> None:
    assert parse_output(f"AGENT_USERNAME=alice\nAGENT_USER_HOME={home}\n") == ("alice", home)


# Running the script


def test_script_without_shebang_runs_with_bash_and_its_syntax() -> None:
    text = (
        "function detect_user {\n"
        '    local who="alice"\n'
        '    [[ "$who" =~ ^al ]] && echo "AGENT_USERNAME=$who"\n'
        '    echo "AGENT_USER_HOME=/home/$who"\n'
        "}\n"
        "detect_user\n"
    )
    result = detect(script_of(text), timeout_s=5)
    assert (result.username, result.user_home) == ("alice", "/home/alice")
    assert result.run.exit_code == 0


def test_empty_output_is_no_user_yet() -> None:
    result = detect(script_of("exit 0\n"), timeout_s=5)
    assert (result.username, result.user_home) == (None, None)


def test_env_interpreter_finds_its_program_on_the_script_path() -> None:
    script = script_of(f"printf '{ALICE}'\n", interpreter=("/usr/bin/env", "bash"))
    result = detect(script, timeout_s=5)
    assert result.username == "alice@example.com"


def test_script_sees_only_the_allow_listed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOLDFAST_TEST_SECRET", "0fb12341-secret-token")
    monkeypatch.setenv("HTTPS_PROXY", "http://user:proxy-password@proxy:3128")
    run = run_script(script_of("env\n"), timeout_s=5)
    seen = variables(run.stdout)
    assert set(seen) - BASH_OWN == {"PATH", "LANG", "HOME", "TMPDIR"}
    assert seen["PATH"] == SCRIPT_PATH
    assert "0fb12341-secret-token" not in run.stdout
    assert "proxy-password" not in run.stdout


@pytest.mark.parametrize(
    ("agent_lang", "script_lang"),
    [("de_DE.UTF-8", "de_DE.UTF-8"), (None, "C.UTF-8"), ("x;$(reboot)", "C.UTF-8")],
)
def test_script_gets_the_agents_lang_only_when_sane(
    monkeypatch: pytest.MonkeyPatch, agent_lang: str | None, script_lang: str
) -> None:
    if agent_lang is None:
        monkeypatch.delenv("LANG", raising=False)
    else:
        monkeypatch.setenv("LANG", agent_lang)
    run = run_script(script_of('echo "LANG=$LANG"\n'), timeout_s=5)
    assert variables(run.stdout)["LANG"] == script_lang


def test_script_runs_in_a_private_scratch_folder_removed_afterwards() -> None:
    text = (
        'echo "HOME=$HOME"\necho "TMPDIR=$TMPDIR"\necho "PWD=$(pwd)"\necho "SCRIPT=$0"\n'
        'echo "MODE=$(ls -ld "$HOME" | cut -c1-10)"\n'
    )
    seen = variables(run_script(script_of(text), timeout_s=5).stdout)
    assert seen["TMPDIR"] == seen["PWD"] == seen["HOME"]
    assert seen["SCRIPT"] == os.path.join(seen["HOME"], "detect_user.sh")
    assert seen["MODE"] == "drwx------"
    assert not Path(seen["HOME"]).exists()


def test_stdin_is_dev_null_so_a_read_returns_at_once() -> None:
    run = run_script(script_of('read -r line\necho "READ=$?"\n'), timeout_s=5)
    assert variables(run.stdout)["READ"] == "1"
    assert run.duration_s < 2


def test_timeout_kills_the_script_and_a_grandchild_that_left_its_session(
    tmp_path: Path, pid_file: Path
) -> None:
    home_file = tmp_path / "home"
    pid_q, home_q = shlex.quote(str(pid_file)), shlex.quote(str(home_file))
    text = (
        # The grandchild writes its own pid, then becomes `sleep` in a session of its own.
        f'setsid bash -c \'echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 1000\' _ {pid_q} &\n'
        f"while [ ! -s {pid_q} ]; do sleep 0.01; done\n"
        f'echo "$HOME" > {home_q}\n'
        "sleep 1000\n"
    )
    started = time.monotonic()
    with pytest.raises(DetectionError) as caught:
        detect(script_of(text), timeout_s=1)
    assert caught.value.code == "timeout"
    assert "within 1 seconds" in caught.value.message
    assert time.monotonic() - started < 3
    assert gone(int(pid_file.read_text()))
    assert not Path(home_file.read_text().strip()).exists()


def test_background_process_holding_the_output_does_not_delay_the_result(pid_file: Path) -> None:
    text = f"sleep 1000 &\necho $! > {shlex.quote(str(pid_file))}\nprintf '{ALICE}'\n"
    result = detect(script_of(text), timeout_s=10)
    assert result.username == "alice@example.com"
    assert result.run.duration_s < 3
    assert gone(int(pid_file.read_text()))


@pytest.mark.parametrize("stream", ["", ">&2"])
def test_a_megabyte_of_output_is_too_much(stream: str) -> None:
    text = f"yes 'AGENT_USERNAME=flood' | head -c 1048576 {stream}\nprintf '{ALICE}'\n"
    with pytest.raises(DetectionError) as caught:
        detect(script_of(text), timeout_s=5)
    assert caught.value.code == "too_much_output"
    assert "64 KiB" in caught.value.message


def test_script_whose_hash_does_not_match_the_policy_is_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    tampered = script_of(f"touch {shlex.quote(str(marker))}\nprintf '{ALICE}'\n")
    tampered = dataclasses.replace(tampered, sha256="0" * 64)
    with pytest.raises(DetectionError) as caught:
        detect(tampered, timeout_s=5)
    assert caught.value.code == "script_hash_mismatch"
    assert not marker.exists()


def test_missing_interpreter_is_named() -> None:
    with pytest.raises(DetectionError) as caught:
        detect(script_of(ALICE, interpreter=("/opt/holdfast-nowhere/bash",)), timeout_s=5)
    assert caught.value.code == "interpreter_missing"
    assert "/opt/holdfast-nowhere/bash" in caught.value.message


def test_missing_program_behind_env_is_named() -> None:
    script = script_of(ALICE, interpreter=("/usr/bin/env", "holdfast-no-such-python"))
    with pytest.raises(DetectionError) as caught:
        detect(script, timeout_s=5)
    assert caught.value.code == "interpreter_missing"
    assert "holdfast-no-such-python" in caught.value.message


def test_non_zero_exit_with_a_user_is_accepted_and_reports_the_exit_code() -> None:
    result = detect(script_of(f"printf '{ALICE}'\nexit 3\n"), timeout_s=5)
    assert (result.username, result.user_home) == ("alice@example.com", "/home/alice")
    assert result.run.exit_code == 3


def test_non_zero_exit_without_a_user_is_script_failed_with_code_and_stderr() -> None:
    text = "echo 'scutil: first line' >&2\necho 'dscl: eDSUnknownNodeName' >&2\nexit 7\n"
    with pytest.raises(DetectionError) as caught:
        detect(script_of(text), timeout_s=5)
    assert caught.value.code == "script_failed"
    assert "exit code 7" in caught.value.message
    assert caught.value.message.endswith("dscl: eDSUnknownNodeName")


def test_script_failed_quotes_at_most_200_characters_of_stderr() -> None:
    with pytest.raises(DetectionError) as caught:
        detect(script_of(f"echo {'x' * 500} >&2\nexit 1\n"), timeout_s=5)
    assert "x" * 200 in caught.value.message
    assert "x" * 201 not in caught.value.message


def test_failed_writes_to_the_vendor_log_do_not_fail_detection() -> None:
    text = (
        'LOG="/Library/Application Support/CrashPlan/log/userDetect_Result.log"\n'
        'function writeLog { echo "$(date) - $1" >> "$LOG"; }\n'
        'writeLog "Detecting the console user"\n'
        "echo C42_USERNAME=alice\n"
        "echo C42_USER_HOME=/Users/alice\n"
        'writeLog "Detected alice"\n'
    )
    result = detect(script_of(text), timeout_s=5)
    assert (result.username, result.user_home) == ("alice", "/Users/alice")
    assert result.run.exit_code != 0
    assert "userDetect_Result.log" in result.run.stderr
