"""Running a fleet: a worker pool that wakes each device when its lifecycle says, on a clock
that the simulation controls.

Each worker thread keeps one AuthorityClient (one kept-alive TLS connection), as an agent
does for the length of an attempt. A device whose time has come waits for a free worker:
the pool bounds how many devices talk to the authority at once, where a real fleet would
not wait and would meet the authority's 503 instead (the report shows that wait).

The clock is real time times `speed`, plus skips: when every device has arrived, none is
being served and the next one is only waiting out a retry interval, the clock jumps to it
instead of sleeping for minutes. Arrivals (installs, or the outage's first retries) are
never skipped to: they come at their real (scaled) times.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.transport import AuthorityClient
from benchmarks.fleet.device import SimulatedDevice

POLL_SECONDS = 0.05


class FleetClock:
    """Simulated time: `origin`, plus the real time since `start()` times `speed`, plus
    the spans skipped."""

    def __init__(self, origin: dt.datetime, speed: float = 1.0) -> None:
        self.origin = origin
        self.speed = speed
        self._began = time.monotonic()
        self._skipped = 0.0

    def start(self) -> None:
        self._began = time.monotonic()
        self._skipped = 0.0

    @property
    def began(self) -> float:
        """The real (monotonic) time of `start()`."""
        return self._began

    def real_elapsed(self) -> float:
        """Real seconds since `start()`."""
        return time.monotonic() - self._began

    def elapsed(self) -> float:
        """Simulated seconds since `origin`."""
        return (time.monotonic() - self._began) * self.speed + self._skipped

    def now(self) -> dt.datetime:
        return self.origin + dt.timedelta(seconds=self.elapsed())

    def seconds(self, when: dt.datetime) -> float:
        return (when - self.origin).total_seconds()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self.speed)

    def skip(self, seconds: float) -> None:
        self._skipped += max(0.0, seconds)

    @property
    def skipped(self) -> float:
        return self._skipped


class FixedClock:
    """A clock that stays at one instant: an attempt whose answer takes no simulated time."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def now(self) -> dt.datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        return None


@dataclass
class FleetRun:
    """How a run went, in real seconds unless said otherwise."""

    wall: float = 0.0
    simulated: float = 0.0  # simulated seconds when the last device finished
    skipped: float = 0.0  # simulated seconds jumped over
    start_delays: list[float] = field(default_factory=list)  # arrival to a worker taking it
    abandoned: list[SimulatedDevice] = field(default_factory=list)  # due past the horizon
    crashed: list[tuple[SimulatedDevice, str]] = field(default_factory=list)


@dataclass(order=True)
class _Due:
    at: float  # simulated seconds since the clock's origin
    seq: int
    arrival: bool = field(compare=False)
    device: SimulatedDevice = field(compare=False)


class _Pool:
    """The heap of devices waiting for their time, and the workers that serve them."""

    def __init__(
        self,
        clock: FleetClock,
        connect: Callable[[], AuthorityClient],
        horizon: float,
        run: FleetRun,
    ) -> None:
        self.clock = clock
        self.connect = connect
        self.horizon = horizon
        self.run = run
        self.heap: list[_Due] = []
        self.seq = itertools.count()
        self.cond = threading.Condition()
        self.work: queue.Queue[_Due | None] = queue.Queue()
        self.in_flight = 0
        self.arrivals_left = 0

    def push(self, at: float, device: SimulatedDevice, arrival: bool) -> None:
        if at > self.horizon:
            self.run.abandoned.append(device)
            return
        heapq.heappush(self.heap, _Due(at, next(self.seq), arrival, device))
        self.arrivals_left += arrival

    def serve(self) -> None:
        """A worker: one kept-alive client, devices one after another."""
        client: AuthorityClient | None = None
        try:
            while (item := self.work.get()) is not None:
                if item.arrival:
                    late = max(0.0, self.clock.elapsed() - item.at) / self.clock.speed
                    self.run.start_delays.append(late)
                client = client or self.connect()
                try:
                    due = item.device.wake(client, self.clock)
                except Exception as exc:  # reported, never a hung run
                    self.run.crashed.append((item.device, repr(exc)))
                    due = None
                with self.cond:
                    self.in_flight -= 1
                    if due is not None:
                        self.push(self.clock.seconds(due), item.device, arrival=False)
                    self.cond.notify()
        finally:
            if client is not None:
                client.close()

    def dispatch(self) -> None:
        """Hand each device to the workers when its time comes; skip idle stretches."""
        with self.cond:
            while self.heap or self.in_flight:
                now = self.clock.elapsed()
                while self.heap and self.heap[0].at <= now:
                    item = heapq.heappop(self.heap)
                    self.arrivals_left -= item.arrival
                    self.in_flight += 1
                    self.work.put(item)
                if not self.heap:
                    self.cond.wait(POLL_SECONDS)
                    continue
                ahead = self.heap[0].at - now
                if self.in_flight == 0 and self.arrivals_left == 0:
                    self.clock.skip(ahead)  # only retry intervals ahead: jump, do not sleep
                    continue
                self.cond.wait(min(POLL_SECONDS, ahead / self.clock.speed))


def run_fleet(
    arrivals: Iterable[tuple[float, SimulatedDevice]],
    clock: FleetClock,
    *,
    workers: int,
    connect: Callable[[], AuthorityClient],
    horizon: float,
) -> FleetRun:
    """Serve every device from its arrival (simulated seconds after the clock's origin)
    until its first snapshot is committed, or its next attempt falls past `horizon`."""
    run = FleetRun()
    pool = _Pool(clock, connect, horizon, run)
    for at, device in arrivals:
        pool.push(at, device, arrival=True)
    threads = [
        threading.Thread(target=pool.serve, name=f"fleet-{i}", daemon=True) for i in range(workers)
    ]
    clock.start()
    for thread in threads:
        thread.start()
    try:
        pool.dispatch()
    finally:
        for _ in threads:
            pool.work.put(None)
        for thread in threads:
            thread.join()
    run.wall = clock.real_elapsed()
    run.simulated = clock.elapsed()
    run.skipped = clock.skipped
    return run


__all__ = ["FixedClock", "FleetClock", "FleetRun", "run_fleet"]
