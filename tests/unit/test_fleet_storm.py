"""The fleet benchmark, tiny: a real authority, 20 devices, the outage replayed fast."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from benchmarks import fleet_storm
from benchmarks.fleet.outage import histogram
from benchmarks.fleet.scheduler import FleetClock

NAMES = ["registered", "duplicates", "errors", "overload_answers", "wall_s", "server_peak_rss_mb"]


@pytest.mark.integration
def test_a_tiny_fleet_registers_every_device_once_and_ends_with_its_counters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = fleet_storm.main(
        [
            *("--devices", "20", "--window", "2", "--workers", "8", "--serve-workers", "2"),
            *("--replay-speed", "100", "--workdir", str(tmp_path)),
        ]
    )
    out = capsys.readouterr().out
    last = dict(line.split(": ", 1) for line in out.splitlines()[-6:])
    assert list(last) == NAMES
    assert last["registered"] == "20"
    assert last["duplicates"] == "0"
    assert last["errors"] == "0"
    assert last["overload_answers"] == "0"
    assert 0 < float(last["wall_s"]) < 120
    assert int(last["server_peak_rss_mb"]) > 0
    # Every device made each request once, through the agent's own code.
    for kind in ("deploy/policy", "deploy/register", "device/policy", "packs", "snapshots"):
        assert f"| {kind} | 20 | 20 | 0 | 0 |" in out
    assert "| attempts while down |" in out and "(connect_failed " in out
    assert "registered 20, committed 20, errors 0" in out  # the outage's replay
    assert code == 0
    assert list(tmp_path.iterdir()) == []  # the work folder is removed


def test_the_arrival_histogram_counts_each_second_from_the_recovery() -> None:
    arrivals = histogram([1800.2, 1800.9, 1801.5, 1804.0], 1800)
    assert arrivals.per_second == (2, 1, 0, 0, 1)
    assert arrivals.mean == pytest.approx(0.8)
    assert (arrivals.peak, arrivals.peak_second) == (2, 0)
    assert arrivals.ratio == pytest.approx(2.5)
    assert arrivals.buckets(2) == [3, 0, 1]


def test_the_fleet_clock_runs_at_its_speed_and_jumps_only_when_told() -> None:
    origin = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    clock = FleetClock(origin, speed=1000)
    clock.start()
    clock.sleep(100)  # 0.1 s of real time
    assert 100 <= clock.elapsed() < 1000
    clock.skip(3600)
    assert clock.now() - origin >= dt.timedelta(seconds=3700)
    assert clock.real_elapsed() < 1
