"""`holdfast logs`: the end of a log, errors support staff can act on, and following it."""

from __future__ import annotations

import io
import logging
import logging.handlers
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import AgentError, Refused
from agent.logview import last_lines, logs_command
from agent.paths import AgentPaths


@pytest.fixture
def paths(tmp_path: Path) -> AgentPaths:
    found = AgentPaths.under(tmp_path / "agent")
    found.log.mkdir(parents=True)
    return found


def write_lines(path: Path, first: int, last: int, width: int = 0) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for n in range(first, last + 1):
            handle.write(f"line {n} é{'x' * width}\n")


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# The last lines


def test_prints_the_last_n_lines(paths: AgentPaths) -> None:
    write_lines(paths.agent_log, 1, 100)
    out = io.StringIO()
    assert logs_command(paths, 3, False, out=out) == 0
    assert out.getvalue() == "line 98 é\nline 99 é\nline 100 é\n"


def test_a_short_log_is_printed_whole(paths: AgentPaths) -> None:
    write_lines(paths.agent_log, 1, 4)
    out = io.StringIO()
    logs_command(paths, 50, False, out=out)
    assert out.getvalue().splitlines() == [f"line {n} é" for n in range(1, 5)]


def test_lines_spanning_many_read_blocks_are_whole(paths: AgentPaths) -> None:
    write_lines(paths.agent_log, 1, 3000, width=200)  # ~620 KB, ten 64 KiB blocks
    with paths.agent_log.open("rb") as handle:
        tail = last_lines(handle, 1000).decode("utf-8").splitlines()
    assert len(tail) == 1000
    assert tail[0] == f"line 2001 é{'x' * 200}"
    assert tail[-1] == f"line 3000 é{'x' * 200}"


def test_zero_lines_prints_nothing(paths: AgentPaths) -> None:
    write_lines(paths.agent_log, 1, 10)
    out = io.StringIO()
    assert logs_command(paths, 0, False, out=out) == 0
    assert out.getvalue() == ""


def test_file_chooses_another_log_of_the_log_folder(paths: AgentPaths) -> None:
    write_lines(paths.agent_log, 1, 3)
    (paths.log / "history.log").write_text("backup completed\n", encoding="utf-8")
    out = io.StringIO()
    logs_command(paths, 10, False, "history", out=out)
    assert out.getvalue() == "backup completed\n"


# Errors


def test_a_missing_log_says_the_agent_has_not_run_here(paths: AgentPaths) -> None:
    with pytest.raises(AgentError) as caught:
        logs_command(paths, 10, False, out=io.StringIO())
    assert caught.value.exit_code == 1
    assert str(paths.agent_log) in caught.value.message
    assert "has not run on this device" in caught.value.message
    assert "--home" in caught.value.message


def test_cli_missing_log_is_one_line_on_stderr_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["logs", "--home", str(tmp_path / "nowhere")])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("holdfast: no agent log yet at ") and err.count("\n") == 1


def test_an_unreadable_log_names_the_file_and_suggests_sudo(
    paths: AgentPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_lines(paths.agent_log, 1, 3)
    real_open = Path.open

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        if self == paths.agent_log:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    # The tests run as root, whom chmod does not stop: refuse the open the way the OS would.
    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(Refused) as caught:
        logs_command(paths, 10, False, out=io.StringIO())
    assert str(paths.agent_log) in caught.value.message
    assert "sudo" in caught.value.message


def test_cli_rejects_a_negative_line_count(
    paths: AgentPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["logs", "--lines", "-3", "--home", str(paths.log.parent)])
    assert caught.value.code == 2
    assert "negative" in capsys.readouterr().err


def test_cli_prints_the_last_lines(paths: AgentPaths, capsys: pytest.CaptureFixture[str]) -> None:
    write_lines(paths.agent_log, 1, 20)
    assert main(["--home", str(paths.log.parent), "logs", "-n", "2"]) == 0
    assert capsys.readouterr().out == "line 19 é\nline 20 é\n"


# Following


class Follower:
    """`logs -f` in a thread, stopped through the injected event."""

    def __init__(self, paths: AgentPaths, lines: int) -> None:
        self.out = io.StringIO()
        self.stop = threading.Event()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, args=(paths, lines), daemon=True)
        self.thread.start()

    def _run(self, paths: AgentPaths, lines: int) -> None:
        self.code = logs_command(paths, lines, True, out=self.out, poll=0.005, stop=self.stop)

    def printed(self) -> list[str]:
        return self.out.getvalue().splitlines()

    def finish(self) -> int | None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        return self.code


@pytest.fixture
def follower(paths: AgentPaths) -> Iterator[Callable[[int], Follower]]:
    started: list[Follower] = []

    def start(lines: int) -> Follower:
        started.append(Follower(paths, lines))
        return started[-1]

    yield start
    for one in started:
        one.stop.set()


def test_follow_prints_lines_appended_after_it_started(
    paths: AgentPaths, follower: Callable[[int], Follower]
) -> None:
    write_lines(paths.agent_log, 1, 10)
    running = follower(2)
    wait_until(lambda: running.printed() == ["line 9 é", "line 10 é"], "the last two lines")
    write_lines(paths.agent_log, 11, 12)
    wait_until(lambda: running.printed()[-1:] == ["line 12 é"], "the appended lines")
    assert running.finish() == 0
    assert running.printed() == ["line 9 é", "line 10 é", "line 11 é", "line 12 é"]


def test_follow_goes_on_across_a_rotation_without_losing_or_repeating_lines(
    paths: AgentPaths, follower: Callable[[int], Follower]
) -> None:
    # The agent's own handler, with a small size: agent.log -> agent.log.1 -> agent.log.2.
    handler = logging.handlers.RotatingFileHandler(
        paths.agent_log, maxBytes=100, backupCount=5, encoding="utf-8"
    )
    logger = logging.getLogger("holdfast.test_logview")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("event 0")
        running = follower(5)
        wait_until(lambda: running.printed() == ["event 0"], "the first line")
        for n in range(1, 61):
            logger.info("event %d", n)
            if n % 10 == 0:  # give the follower a moment between bursts, as real logs do
                wait_until(lambda n=n: f"event {n}" in running.printed(), f"event {n}")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert (paths.log / "agent.log.2").exists()  # it did rotate, more than once
    wait_until(lambda: running.printed()[-1:] == ["event 60"], "the last event")
    assert running.finish() == 0
    assert running.printed() == [f"event {n}" for n in range(61)]


def test_follow_starts_over_when_the_log_is_truncated_in_place(
    paths: AgentPaths, follower: Callable[[int], Follower]
) -> None:
    write_lines(paths.agent_log, 1, 50)
    running = follower(1)
    wait_until(lambda: running.printed() == ["line 50 é"], "the last line")
    paths.agent_log.write_text("after truncation\n", encoding="utf-8")
    wait_until(lambda: running.printed()[-1:] == ["after truncation"], "the new content")
    assert running.finish() == 0


def test_ctrl_c_while_following_exits_0(paths: AgentPaths) -> None:
    class CtrlC(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            raise KeyboardInterrupt

    write_lines(paths.agent_log, 1, 3)
    out = io.StringIO()
    assert logs_command(paths, 1, True, out=out, poll=0.001, stop=CtrlC()) == 0
    assert out.getvalue() == "line 3 é\n"
