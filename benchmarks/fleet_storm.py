"""A mass install against a real authority: N devices within a minute, then an outage.

    python -m benchmarks.fleet_storm [--devices 10000] [--window 60] [--workers 64]

Scenario 1, the storm: a real authority (`holdfast-authority init`, a local-authentication
organization, a silent policy, `serve` over HTTPS with SQLite) and N simulated devices
installed at random times within `--window` seconds. Each runs the agent's own lifecycle
and transport (benchmarks/fleet/device.py says what is real and what is simulated): policy
fetch, registration with its own GUID and user, the check-in, and a first small snapshot
(chunks/missing, one pack, the snapshot). Then the authority's device and user lists are
checked against the fleet.

Scenario 2, the outage: another fleet installs while the authority is down for the first
`--outage-minutes` simulated minutes; the agents' retries after it comes back, per second,
show whether jitter spreads them; then they are replayed against the started authority
(benchmarks/fleet/outage.py says how, without waiting half an hour).

The output ends with one `name: value` line each for registered, duplicates, errors,
overload_answers, wall_s and server_peak_rss_mb (of the storm); the exit code is 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import random
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

from agent.config import AgentConfig
from agent.deploy_args import parse_cp_args
from benchmarks.fleet.authority import FleetAuthority, free_port
from benchmarks.fleet.census import take_census
from benchmarks.fleet.device import FleetSettings, RequestTally, SimulatedDevice
from benchmarks.fleet.outage import histogram, lifecycle_arrivals, schedule_while_down
from benchmarks.fleet.report import OutageResult, StormResult, outage_table, storm_table
from benchmarks.fleet.scheduler import FleetClock, run_fleet

WALL_TARGET = 120.0
SPREAD_TARGET = 3.0
HORIZON = 4 * 3600.0  # simulated seconds after which a device still retrying is given up
# The outage's arrivals in the lifecycle alone, for comparison: none, and wider than 0.1.
COMPARED_JITTERS = (0.0, 0.2, 0.3)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fleet_storm", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--devices", type=int, default=10_000, help="devices in the storm")
    parser.add_argument("--window", type=float, default=60.0, help="install window, seconds")
    parser.add_argument(
        "--workers", type=int, default=64, help="simulator threads (devices served at once)"
    )
    parser.add_argument(
        "--serve-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="`serve --workers`: the authority's processes (default: one a CPU)",
    )
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for `holdfast-authority serve` (repeat for several)",
    )
    parser.add_argument(
        "--outage-devices", type=int, help="devices in the outage (default: --devices)"
    )
    parser.add_argument("--outage-minutes", type=float, default=30.0)
    parser.add_argument(
        "--replay-speed", type=float, default=5.0, help="the replay after the outage, x real time"
    )
    parser.add_argument("--no-outage", action="store_true", help="the storm only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    options = parser.parse_args(argv)
    if min(options.devices, options.workers, options.serve_workers) < 1 or options.window < 0:
        parser.error("--devices and the workers must be at least 1, --window at least 0")
    return options


def serve_args(options: argparse.Namespace) -> tuple[str, ...]:
    workers = ("--workers", str(options.serve_workers)) if options.serve_workers > 1 else ()
    return (*workers, *options.serve_arg)


@contextlib.contextmanager
def devices_folder(root: Path, keep: bool) -> Iterator[Path]:
    """Where the simulated agents keep their credential files: tmpfs when there is one, so
    thousands of agents' fsyncs do not load the disk the authority writes to."""
    shm = Path("/dev/shm")  # noqa: S108  # a private mkdtemp folder inside it
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) and not keep else root
    folder = Path(tempfile.mkdtemp(prefix="holdfast-fleet-devices-", dir=base))
    try:
        yield folder
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def fleet_of(authority: FleetAuthority, devices_dir: Path) -> FleetSettings:
    """What the installer arguments give every device (as `policy show` prints them)."""
    args = parse_cp_args(authority.cp_args)
    return FleetSettings(
        deployment_url=args.deployment_url,
        token=args.token,
        pins=args.ssl_whitelist,
        org=authority.org,
        devices_dir=devices_dir,
    )


def install_times(
    devices: Sequence[SimulatedDevice], window: float, seed: int
) -> list[tuple[float, SimulatedDevice]]:
    rng = random.Random(f"{seed}:installs")  # noqa: S311  # a simulation, not a secret
    return sorted(((rng.uniform(0, window), d) for d in devices), key=lambda pair: pair[0])


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_storm(options: argparse.Namespace, root: Path, devices_dir: Path) -> StormResult:
    authority = FleetAuthority(root / "storm", free_port(), serve_args=serve_args(options))
    authority.create()
    authority.start()
    try:
        fleet = fleet_of(authority, devices_dir / "storm")
        tally = RequestTally()
        devices = [
            SimulatedDevice(i, fleet, tally, seed=options.seed, prefix="storm")
            for i in range(options.devices)
        ]
        installs = install_times(devices, options.window, options.seed)
        server_before, client_before = authority.cpu_seconds(), _cpu_self()
        clock = FleetClock(dt.datetime.now(dt.UTC))
        run = run_fleet(
            installs, clock, workers=options.workers, connect=fleet.client, horizon=HORIZON
        )
        server_cpu = authority.cpu_seconds() - server_before
        client_cpu = _cpu_self() - client_before
        peak = authority.peak_rss()
        census = take_census(devices, authority.devices(), authority.users())
    finally:
        authority.stop()
    began = clock.began
    to_snapshot = [
        d.record.committed - (began + at) for at, d in installs if d.record.committed is not None
    ]
    return StormResult(
        devices=options.devices,
        window=options.window,
        workers=options.workers,
        serve_args=serve_args(options),
        run=run,
        tally=tally,
        census=census,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        server_peak_rss=peak,
        to_snapshot=to_snapshot,
    )


def run_outage(options: argparse.Namespace, root: Path, devices_dir: Path) -> OutageResult:
    count = options.outage_devices or options.devices
    down = options.outage_minutes * 60.0
    port = free_port()
    authority = FleetAuthority(root / "outage", port, serve_args=serve_args(options))
    authority.create()
    fleet = fleet_of(authority, devices_dir / "outage")
    down_tally = RequestTally()
    devices = [
        SimulatedDevice(i, fleet, down_tally, seed=options.seed, prefix="outage")
        for i in range(count)
    ]
    installs = install_times(devices, min(options.window, 60.0), options.seed + 1)
    origin = dt.datetime.now(dt.UTC)
    # Down: the port is ours but nothing listens, so every connection is refused.
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        schedule = schedule_while_down(
            installs, origin, down, connect=fleet.client, workers=options.workers
        )
    arrivals = histogram([at for at, _ in schedule.retries], down)
    timings = AgentConfig().timings(None)  # the agent's defaults: no policy was received
    jitters = {
        jitter: histogram(
            lifecycle_arrivals(installs, down, replace(timings, jitter=jitter), options.seed),
            down,
        )
        for jitter in COMPARED_JITTERS
    }
    authority.start()
    try:
        tally = RequestTally()
        for device in devices:
            device.tally = tally
        clock = FleetClock(origin + dt.timedelta(seconds=down), speed=options.replay_speed)
        run = run_fleet(
            [(at - down, device) for at, device in schedule.retries],
            clock,
            workers=options.workers,
            connect=fleet.client,
            horizon=HORIZON,
        )
        census = take_census(devices, authority.devices(), authority.users())
    finally:
        authority.stop()
    return OutageResult(
        devices=count,
        down=down,
        speed=options.replay_speed,
        schedule=schedule,
        arrivals=arrivals,
        jitters=jitters,
        run=run,
        tally=tally,
        census=census,
    )


def targets(storm: StormResult, outage: OutageResult | None) -> list[tuple[bool, str]]:
    """Each target: met or not, and the line that says so."""
    c = storm.census
    results = [
        (c.registered == storm.devices, f"registered: {c.registered} of {storm.devices}"),
        (c.duplicates == 0, f"duplicates: {c.duplicates} (0)"),
        (storm.errors == 0, f"errors: {storm.errors} (0)"),
        (storm.run.wall < WALL_TARGET, f"wall: {storm.run.wall:.1f} s (< {WALL_TARGET:.0f} s)"),
    ]
    if outage is not None:
        a = outage.arrivals
        if outage.spread_checked:
            results.append(
                (
                    a.ratio <= SPREAD_TARGET,
                    f"outage: busiest second {a.peak} = {a.ratio:.2f}x the mean "
                    f"{a.mean:.1f}/s (<= {SPREAD_TARGET:g})",
                )
            )
        done = outage.census.registered == outage.devices and outage.errors == 0
        results.append(
            (
                done and outage.census.duplicates == 0,
                f"outage replay: registered {outage.census.registered} of {outage.devices}, "
                f"errors {outage.errors}, duplicates {outage.census.duplicates}",
            )
        )
    return results


def _stop(signum: int, _frame: FrameType | None) -> None:
    # As Ctrl-C does: the authorities started are stopped and the work folder removed.
    raise SystemExit(128 + signum)


def run(options: argparse.Namespace) -> tuple[StormResult, OutageResult | None]:
    """Both scenarios in a new work folder, removed afterwards unless --keep."""
    if options.workdir:
        options.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="holdfast-fleet-", dir=options.workdir))
    print(
        f"work folder {root}; {os.cpu_count()} CPUs; {options.devices} devices within "
        f"{options.window:g} s, {options.workers} simulator workers",
        flush=True,
    )
    try:
        with devices_folder(root, options.keep) as devices_dir:
            storm = run_storm(options, root, devices_dir)
            print("\n".join(["", *storm_table(storm)]), flush=True)
            outage = None if options.no_outage else run_outage(options, root, devices_dir)
    finally:
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    return storm, outage


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if in_main else None
    try:
        storm, outage = run(options)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if outage is not None:
        print("\n".join(["", *outage_table(outage)]))
    results = targets(storm, outage)
    print()
    print(f"{dt.date.today().isoformat()}, {os.cpu_count()} CPUs")
    for met, line in results:
        print(f"{'PASS' if met else 'MISS'}  {line}")
    print()
    print(f"registered: {storm.census.registered}")
    print(f"duplicates: {storm.census.duplicates}")
    print(f"errors: {storm.errors}")
    print(f"overload_answers: {storm.tally.overload}")
    print(f"wall_s: {storm.run.wall:.1f}")
    print(f"server_peak_rss_mb: {storm.server_peak_rss / 1e6:.0f}")
    return 0 if all(met for met, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
