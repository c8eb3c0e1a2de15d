"""The policy's bandwidth limit: the token bucket on a fake clock, and a backup under it.

No test waits: the bucket's clock and sleep are injected, and the one test of a stop
during a throttled upload relies on the stop cutting the wait short.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from agent.backup.throttle import UploadLimit, interruptible_sleep
from agent.errors import BackupCancelled
from tests.unit.test_backup_engine import backup, build_tree
from tests.unit.test_backup_fake import FakeAuthority

MB = 1_000_000


class FakeClock:
    """Time that passes only when someone sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


class StoppedClock(FakeClock):
    """Sleeps are recorded, time stands still: each wait shows the debt its caller saw."""

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)


def limit_at(kbps: int, clock: FakeClock) -> UploadLimit:
    limit = UploadLimit.from_policy(kbps, clock=clock, sleep=clock.sleep)
    assert limit is not None
    return limit


def test_10_mb_at_1000_kbps_take_80_seconds() -> None:
    clock = FakeClock()
    limit = limit_at(1000, clock)  # 125,000 bytes a second
    for _ in range(10):
        limit.take(MB)
    # 80 s for 10 MB, less the one second of burst an idle bucket holds.
    assert clock.now == pytest.approx(79.0)


def test_one_pack_bigger_than_the_bucket_waits_for_its_bytes_instead_of_failing() -> None:
    clock = FakeClock()
    limit = limit_at(8, clock)  # 1,000 bytes a second
    limit.take(16 * 1024 * 1024)
    assert clock.now == pytest.approx((16 * 1024 * 1024 - 1000) / 1000)


def test_no_limit_in_the_policy_means_no_bucket_at_all() -> None:
    assert UploadLimit.from_policy(0) is None
    assert UploadLimit.from_policy(-5) is None
    with pytest.raises(ValueError, match="positive"):
        UploadLimit(0)


def test_an_idle_bucket_saves_up_one_second_of_rate_not_more() -> None:
    clock = FakeClock()
    limit = limit_at(1000, clock)
    limit.take(125_000)  # the initial burst: no wait
    assert clock.sleeps == []
    clock.now += 3600.0  # an hour without uploads
    limit.take(250_000)
    assert clock.sleeps == [pytest.approx(1.0)]


def test_within_the_rate_nothing_waits() -> None:
    clock = FakeClock()
    limit = limit_at(1000, clock)
    for _ in range(10):
        clock.now += 1.0
        limit.take(125_000)
    assert clock.sleeps == []


def test_all_workers_share_one_rate() -> None:
    clock = StoppedClock()
    limit = limit_at(1000, clock)
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        limit.take(MB)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each sender waits behind those before it: 4 MB take 32 s in all (less the burst),
    # not the 8 s that four separate limits would allow.
    assert sorted(clock.sleeps) == [pytest.approx(8.0 * n - 1.0) for n in (1, 2, 3, 4)]


def test_a_backup_under_a_limit_sends_at_that_rate(tmp_path: Path) -> None:
    build_tree(tmp_path / "home")
    fake = FakeAuthority()
    clock = FakeClock()
    limit = limit_at(800, clock)  # 100,000 bytes a second
    result = backup(fake, tmp_path / "home", tmp_path / "state", workers=1, limit=limit)
    assert result.sent_bytes > 5 * MB
    # Every pack, the manifest's included, paid for its bytes.
    assert clock.now == pytest.approx((result.sent_bytes - 100_000) / 100_000)
    assert len(clock.sleeps) == fake.count("PUT", "/api/v1/device/packs/")


def test_a_retried_pack_pays_for_each_attempt(tmp_path: Path) -> None:
    build_tree(tmp_path / "home")
    fake = FakeAuthority()
    failed: list[str] = []

    def first_pack_fails_once(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PUT" and "/packs/" in request.url.path and not failed:
            failed.append(request.url.path)
            return httpx.Response(503)
        return None

    fake.faults.append(first_pack_fails_once)
    clock = FakeClock()
    limit = limit_at(800, clock)
    result = backup(fake, tmp_path / "home", tmp_path / "state", workers=1, limit=limit)
    assert failed
    assert clock.now > (result.sent_bytes - 100_000) / 100_000 + 1.0


def test_a_stop_cuts_a_throttled_wait_short(tmp_path: Path) -> None:
    build_tree(tmp_path / "home")
    fake = FakeAuthority()
    cancel = threading.Event()

    def stop_when_uploads_begin(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/chunks/missing"):
            cancel.set()
        return None

    fake.faults.append(stop_when_uploads_begin)
    # The real clock at 1 kbps (125 bytes a second): the first pack would wait 12 hours.
    limit = UploadLimit.from_policy(1, sleep=interruptible_sleep(cancel))
    with pytest.raises(BackupCancelled):
        backup(fake, tmp_path / "home", tmp_path / "state", cancel=cancel, limit=limit)
    assert fake.count("PUT", "/api/v1/device/packs/") == 0
    assert not fake.snapshots


def test_an_interruptible_sleep_without_a_stop_event_is_a_plain_sleep() -> None:
    assert interruptible_sleep(None) is time.sleep
