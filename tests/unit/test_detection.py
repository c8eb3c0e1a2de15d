"""User detection: what a detection script may print, and how the agent runs it."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import secrets
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent import logs
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


def marker() -> str:
    """A `sleep` argument no other process has: how a test finds what a script started."""
    return f"{1000 + secrets.randbelow(10**6)}.{secrets.randbelow(10**9):09d}"


def survivors(mark: str, within_s: float = 2.0) -> list[str]:
    """Command lines still holding `mark` after `within_s` (zombies count as gone)."""
    deadline = time.monotonic() + within_s
    while True:
        found = []
        for process in psutil.process_iter(["cmdline", "status"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if mark in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(cmdline)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def scratch_folders() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "holdfast-detect-*")))


def log_lines(path: Path) -> list[str]:
    return path.read_text("utf-8").splitlines() if path.exists() else []


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


def test_timeout_kills_the_script_and_a_grandchild_that_left_its_session() -> None:
    mark, before = marker(), scratch_folders()
    # The grandchild becomes `sleep` in a session of its own, out of the script's group.
    text = f"setsid sleep {mark} &\nsleep 0.2\nsleep {mark}\n"
    started = time.monotonic()
    with pytest.raises(DetectionError) as caught:
        detect(script_of(text), timeout_s=1)
    assert caught.value.code == "timeout"
    assert "within 1 seconds" in caught.value.message
    assert time.monotonic() - started < 3
    assert survivors(mark) == []
    assert scratch_folders() == before


def test_background_process_holding_the_output_does_not_delay_the_result() -> None:
    mark = marker()
    result = detect(script_of(f"sleep {mark} &\nprintf '{ALICE}'\n"), timeout_s=10)
    assert result.username == "alice@example.com"
    assert result.run.duration_s < 3
    assert survivors(mark) == []


def test_stop_request_ends_the_script_at_once() -> None:
    mark, asked = marker(), time.monotonic() + 0.3
    started = time.monotonic()
    with pytest.raises(DetectionError) as caught:
        detect(
            script_of(f"sleep {mark}\n"), timeout_s=30, should_stop=lambda: time.monotonic() > asked
        )
    assert caught.value.code == "stopped"
    assert time.monotonic() - started < 2
    assert survivors(mark) == []


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


# What support staff read: log/detection.log


def test_each_run_leaves_a_start_and_an_end_line_in_detection_log(tmp_path: Path) -> None:
    path = tmp_path / "log" / "detection.log"
    script = script_of(f"echo 'looking for the console user' >&2\nprintf '{ALICE}'\n")
    detect(script, timeout_s=5, log_path=path)
    start, end = log_lines(path)
    assert " start " in start
    assert f"sha256={script.sha256[:12]}" in start
    assert "isolation=" in start
    assert "account=" in start
    run_id = start.split("run=")[1].split()[0]
    assert f"run={run_id}" in end
    assert " end " in end
    assert "exit=0" in end
    assert "result=user username=alice@example.com home=/home/alice" in end
    assert "stderr='looking for the console user'" in end


def test_failed_run_names_its_error_code_and_keeps_each_record_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "detection.log"
    with pytest.raises(DetectionError):
        detect(
            script_of("printf 'AGENT_USERNAME=evil\\033[2J\\nAGENT_USER_HOME=/x\\n'\n"),
            timeout_s=5,
            log_path=path,
        )
    lines = log_lines(path)
    assert len(lines) == 2
    assert "result=invalid_username" in lines[1]
    assert "\x1b" not in path.read_text("utf-8")


def test_a_refused_script_is_recorded_without_running(tmp_path: Path) -> None:
    path = tmp_path / "detection.log"
    tampered = dataclasses.replace(script_of(ALICE), sha256="0" * 64)
    with pytest.raises(DetectionError):
        detect(tampered, timeout_s=5, log_path=path)
    (line,) = log_lines(path)
    assert " end " in line
    assert "result=script_hash_mismatch" in line
    assert "exit=" not in line


def test_a_secret_registered_with_the_redactor_never_reaches_detection_log(tmp_path: Path) -> None:
    path = tmp_path / "detection.log"
    secret = "0fb12341-redact-me-" + secrets.token_hex(4)
    logs.redactor.add(secret)
    with pytest.raises(DetectionError):
        detect(script_of(f"echo {secret} >&2\nexit 3\n"), timeout_s=5, log_path=path)
    text = path.read_text("utf-8")
    assert secret not in text
    assert logs.REDACTED in text


def test_scratch_folders_a_killed_agent_left_behind_are_removed_by_the_next_run() -> None:
    stale = Path(tempfile.mkdtemp(prefix="holdfast-detect-"))
    recent = Path(tempfile.mkdtemp(prefix="holdfast-detect-"))
    (stale / "detect_user.sh").write_text("sleep 1000\n")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    try:
        detect(script_of(ALICE), timeout_s=5)
        assert not stale.exists()
        assert recent.exists()  # another run may still be using it
    finally:
        for folder in (stale, recent):
            if folder.exists():
                shutil.rmtree(folder)


def test_stop_request_holds_after_the_script_closed_its_output() -> None:
    mark, asked = marker(), time.monotonic() + 0.3
    started = time.monotonic()
    with pytest.raises(DetectionError) as caught:
        detect(
            script_of(f"exec >&- 2>&-\nsleep {mark}\n"),
            timeout_s=30,
            should_stop=lambda: time.monotonic() > asked,
        )
    assert caught.value.code == "stopped"
    assert time.monotonic() - started < 2
    assert survivors(mark) == []
