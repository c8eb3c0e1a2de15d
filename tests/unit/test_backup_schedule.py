"""The scheduled backup under the policy's conditions: held on battery, throttled, at a low
priority; and the progress `holdfast backup-now` shows (rate, total, ETA)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest

from agent.backup import engine, schedule
from agent.backup.commands import progress_line
from agent.backup.engine import BackupProgress
from agent.backup.progress import ProgressFile, eta_seconds, read_progress
from agent.backup.schedule import back_up_home, low_priority, on_battery
from agent.backup.throttle import UploadLimit
from agent.errors import TransientError
from agent.lifecycle_model import BackupDone
from tests.conftest import require_tool
from tests.unit.test_backup_engine import backup
from tests.unit.test_backup_fake import CREDENTIAL, FakeAuthority

HELD = "backup held: the device runs on battery (policy pause_on_battery)"
MB = 1_000_000


class Battery(NamedTuple):
    """What psutil.sensors_battery() answers."""

    percent: float
    secsleft: int
    power_plugged: bool | None


UNPLUGGED = Battery(55.0, 3600, False)
PLUGGED = Battery(55.0, -2, True)


@pytest.fixture(autouse=True)
def _fresh_notices() -> Iterator[None]:
    schedule._notices.clear()
    yield
    schedule._notices.clear()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    root.mkdir()
    (root / "notes.txt").write_text("notes\n" * 1000)
    (root / "photo.jpg").write_bytes(os.urandom(300_000))
    return root


def run_scheduled(
    fake: FakeAuthority, home: Path, tmp_path: Path, **settings: Any
) -> BackupDone | None:
    battery = settings.pop("battery", lambda: None)
    (tmp_path / "run").mkdir(exist_ok=True)
    with fake.client() as client:
        return back_up_home(
            client,
            CREDENTIAL,
            str(home),
            {"exclude": [], **settings},
            state_dir=tmp_path / "state",
            run_dir=tmp_path / "run",
            cancel=threading.Event(),
            battery=battery,
        )


# Pause on battery


def test_on_battery_with_pause_on_battery_the_backup_is_held_and_says_why(
    home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeAuthority()
    with caplog.at_level(logging.INFO, logger="holdfast"):
        for _ in range(3):  # three scheduled attempts while the laptop stays unplugged
            with pytest.raises(TransientError) as held:
                run_scheduled(
                    fake, home, tmp_path, pause_on_battery=True, battery=lambda: UNPLUGGED
                )
    assert held.value.code == "on_battery"
    assert "plugged in" in held.value.message
    assert fake.calls == []  # not a byte read or sent
    assert caplog.text.count(HELD) == 1
    assert "Starting backup" not in caplog.text


def test_plugged_in_again_the_backup_runs_and_a_new_hold_is_logged_again(
    home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeAuthority()
    with caplog.at_level(logging.INFO, logger="holdfast"):
        with pytest.raises(TransientError):
            run_scheduled(fake, home, tmp_path, pause_on_battery=True, battery=lambda: UNPLUGGED)
        done = run_scheduled(fake, home, tmp_path, pause_on_battery=True, battery=lambda: PLUGGED)
        with pytest.raises(TransientError):
            run_scheduled(fake, home, tmp_path, pause_on_battery=True, battery=lambda: UNPLUGGED)
    assert isinstance(done, BackupDone) and done.files == 2
    assert caplog.text.count(HELD) == 2


def test_without_pause_on_battery_a_backup_runs_on_battery(home: Path, tmp_path: Path) -> None:
    done = run_scheduled(
        FakeAuthority(), home, tmp_path, pause_on_battery=False, battery=lambda: UNPLUGGED
    )
    assert isinstance(done, BackupDone)


@pytest.mark.parametrize(
    "reading",
    [None, Battery(80.0, -1, None), PLUGGED],
    ids=["no battery", "plug state unknown", "plugged in"],
)
def test_a_device_without_a_battery_or_plugged_in_is_not_on_battery(
    reading: Battery | None,
) -> None:
    assert on_battery(lambda: reading) is False


def test_a_battery_probe_that_fails_does_not_hold_backups() -> None:
    def broken() -> Battery:
        raise OSError("no /sys/class/power_supply")

    assert on_battery(broken) is False
    assert on_battery(lambda: UNPLUGGED) is True


# Bandwidth limit


@pytest.mark.parametrize(("kbps", "rate"), [(1000, 125_000.0), (0, None), ("junk", None)])
def test_the_policy_bandwidth_limit_reaches_the_uploads(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kbps: object, rate: float | None
) -> None:
    seen: list[UploadLimit | None] = []
    real = engine.run_backup

    def recording(*args: Any, **kwargs: Any) -> engine.BackupResult:
        seen.append(kwargs["limit"])
        kwargs["limit"] = None  # the real clock is not for unit tests
        return real(*args, **kwargs)

    monkeypatch.setattr(schedule, "run_backup", recording)
    run_scheduled(FakeAuthority(), home, tmp_path, bandwidth_limit_kbps=kbps)
    assert (seen[0].rate if seen[0] else None) == rate


# Low priority


def test_the_backup_runs_inside_the_low_priority_block(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []

    @contextlib.contextmanager
    def recording() -> Iterator[None]:
        events.append("lowered")
        yield
        events.append("restored")

    real = engine.run_backup

    def run(*args: Any, **kwargs: Any) -> engine.BackupResult:
        events.append("backup")
        return real(*args, **kwargs)

    monkeypatch.setattr(schedule, "low_priority", recording)
    monkeypatch.setattr(schedule, "run_backup", run)
    run_scheduled(FakeAuthority(), home, tmp_path)
    assert events == ["lowered", "backup", "restored"]


class IoNice(NamedTuple):
    ioclass: int
    value: int


class FakeTask:
    """A thread as an unprivileged Linux agent sees it: it may lower itself, not raise."""

    def __init__(self, nice: int = 0) -> None:
        self.current = nice
        self.io = IoNice(0, 0)  # IOPRIO_CLASS_NONE: the I/O priority follows the nice

    def nice(self, value: int | None = None) -> int | None:
        if value is None:
            return self.current
        if value < self.current:
            raise psutil.AccessDenied(os.getpid(), msg="Permission denied")
        self.current = value
        return None

    def ionice(self, ioclass: int | None = None, value: int | None = None) -> IoNice | None:
        if ioclass is None:
            return self.io
        self.io = IoNice(ioclass, value or 0)
        return None


@pytest.mark.skipif(sys.platform != "linux", reason="the I/O classes asserted are Linux's")
def test_a_priority_that_cannot_be_restored_is_a_debug_line_not_a_failed_backup(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task = FakeTask()
    monkeypatch.setattr(schedule, "_backup_task", lambda: task)
    with caplog.at_level(logging.DEBUG, logger="holdfast"), low_priority():
        assert task.current == 10
        assert (task.io.ioclass, task.io.value) == (psutil.IOPRIO_CLASS_BE, 7)
    assert task.current == 10  # Linux would not let it go back up
    assert task.io.ioclass == psutil.IOPRIO_CLASS_NONE  # this one may
    assert "backup CPU priority not restored" in caplog.text


def test_an_agent_started_lower_is_never_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    task = FakeTask(nice=15)
    monkeypatch.setattr(schedule, "_backup_task", lambda: task)
    with low_priority():
        assert task.current == 15
    assert task.current == 15


def test_a_priority_that_cannot_be_changed_does_not_fail_the_backup(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*_args: Any) -> Any:
        raise psutil.AccessDenied(os.getpid())

    monkeypatch.setattr(psutil.Process, "nice", refuse)
    monkeypatch.setattr(psutil.Process, "ionice", refuse, raising=False)
    with caplog.at_level(logging.DEBUG, logger="holdfast"):
        done = run_scheduled(FakeAuthority(), home, tmp_path)
    assert isinstance(done, BackupDone)
    assert "backup CPU priority left as is" in caplog.text


def _readings() -> tuple[int, tuple[int, int]]:
    me = psutil.Process(threading.get_native_id())
    io = me.ionice()
    return me.nice(), (int(io.ioclass), io.value)


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice and ionice are Linux's")
def test_the_backup_thread_and_its_workers_run_at_nice_10_and_lowest_best_effort_io() -> None:
    require_tool(
        hasattr(os, "geteuid") and os.geteuid() == 0,
        "only root may raise a thread's priority back, which the restore needs",
    )
    seen: dict[str, Any] = {}

    def backup_thread() -> None:
        seen["before"] = _readings()
        with low_priority():
            seen["during"] = _readings()
            # Upload workers start inside the run: they inherit its priority.
            with ThreadPoolExecutor(1) as pool:
                seen["worker"] = pool.submit(_readings).result()
            seen["main during"] = main.nice()
        seen["after"] = _readings()

    main = psutil.Process()
    thread = threading.Thread(target=backup_thread)
    thread.start()
    thread.join()
    low = (10, (int(psutil.IOPRIO_CLASS_BE), 7))
    assert seen["during"] == low
    assert seen["worker"] == low
    assert seen["after"] == seen["before"]
    assert seen["main during"] == main.nice()  # the daemon's other threads are left alone


# Progress: rate, total, ETA


def report(read: int, to_read: int | None = None, files: int = 3) -> BackupProgress:
    return BackupProgress(
        files=files,
        bytes=read,
        read_bytes=read,
        sent_bytes=0,
        chunks_uploaded=0,
        current=None,
        to_read_bytes=to_read,
    )


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_file_has_the_recent_read_rate_and_the_total_once_known(
    tmp_path: Path,
) -> None:
    clock = Ticks()
    progress = ProgressFile(tmp_path / "progress.json", clock=clock)
    for second in range(1, 6):
        clock.now += 1.0
        progress.update(report(read=2 * MB * second))
    written = read_progress(tmp_path / "progress.json")
    assert written is not None
    assert written["rate_bps"] == pytest.approx(2 * MB)
    assert written["total_bytes"] is None
    assert "to_read_bytes" not in written
    clock.now += 1.0
    progress.update(report(read=12 * MB, to_read=40 * MB))
    written = json.loads((tmp_path / "progress.json").read_text())
    assert written["total_bytes"] == 40 * MB
    assert eta_seconds(written) == pytest.approx(14.0)


def test_the_rate_follows_the_last_seconds_not_the_whole_run(tmp_path: Path) -> None:
    clock = Ticks()
    progress = ProgressFile(tmp_path / "progress.json", clock=clock)
    # A minute of unchanged files (nothing read), then reading at 5 MB/s.
    for _ in range(60):
        clock.now += 1.0
        progress.update(report(read=0))
    for second in range(1, 21):
        clock.now += 1.0
        progress.update(report(read=5 * MB * second))
    written = read_progress(tmp_path / "progress.json")
    assert written is not None
    assert written["rate_bps"] == pytest.approx(5 * MB)


@pytest.mark.parametrize(
    ("running", "eta"),
    [
        ({"total_bytes": 100 * MB, "read_bytes": 40 * MB, "rate_bps": 2 * MB}, 30.0),
        ({"total_bytes": None, "read_bytes": 40 * MB, "rate_bps": 2 * MB}, None),
        ({"total_bytes": 100 * MB, "read_bytes": 40 * MB, "rate_bps": 0}, None),
        ({"total_bytes": 100 * MB, "read_bytes": 101 * MB, "rate_bps": 0}, 0.0),
        ({"read_bytes": 40 * MB}, None),  # a daemon of the version before
    ],
    ids=["known", "scan going", "stalled", "grew while read", "old daemon"],
)
def test_the_eta_is_given_only_when_it_can_be_told(running: dict[str, Any], eta: float) -> None:
    assert eta_seconds(running) == eta


def test_backup_now_shows_files_mb_read_of_total_rate_and_eta() -> None:
    line = progress_line(
        {"files": 120, "read_bytes": 40 * MB, "total_bytes": 100 * MB, "rate_bps": 2 * MB}
    )
    assert line.strip() == (
        "backing up: 120 files, 40.0 MB read / 100.0 MB total, 2.0 MB/s, ETA 00:30"
    )
    assert line.startswith("\r")


def test_backup_now_says_eta_unknown_while_the_scan_goes_on() -> None:
    line = progress_line({"files": 7, "read_bytes": 3 * MB, "total_bytes": None, "rate_bps": 0})
    assert line.strip() == "backing up: 7 files, 3.0 MB read, 0.0 MB/s, ETA unknown"


def test_an_eta_of_hours_shows_its_hours() -> None:
    line = progress_line(
        {"files": 1, "read_bytes": 0, "total_bytes": 9_000 * MB, "rate_bps": 1 * MB}
    )
    assert line.strip().endswith("ETA 2:30:00")


def test_the_engine_reports_the_bytes_to_read_once_its_scan_has_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "SCAN_BATCH", 4)
    home = tmp_path / "home"
    home.mkdir()
    for n in range(8):  # two full batches: the scan's end shows only after the last one
        (home / f"file{n}.bin").write_bytes(os.urandom(10_000 * (n + 1)))
    fake = FakeAuthority()
    reports: list[BackupProgress] = []
    backup(fake, home, tmp_path / "state", progress=reports.append)
    assert reports[0].to_read_bytes is None  # after the first batch the scan goes on
    assert reports[-1].to_read_bytes == sum(10_000 * (n + 1) for n in range(8))
    assert reports[-1].read_bytes == reports[-1].to_read_bytes

    (home / "file0.bin").write_bytes(os.urandom(5_000))  # the only file read again
    reports.clear()
    backup(fake, home, tmp_path / "state", progress=reports.append)
    assert reports[-1].to_read_bytes == 5_000
