"""The outage scenario: the authority is down while the fleet installs, and comes back.

No one waits thirty minutes. While the authority is down every attempt fails at once, so
each device's schedule does not depend on the others: each device's attempts are made in
simulated time, one after another, by the agent's own lifecycle (`step` decides every next
attempt: the policy retry interval, the jitter, the device's phase) and its own transport
(a real connection to the authority's port, refused because nothing listens there yet).
The first attempt each device schedules at or after the recovery is its retry arrival;
their per-second histogram is what the authority would see. The lifecycle alone, with
other values of `retry_jitter` (0: none), is the comparison. Then the authority is started
on that port, and the arrivals are replayed against it in real time, `speed` times faster.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from agent.lifecycle import Env, Failed, Started, State, Tick, Timings, device_phase, step
from agent.transport import AuthorityClient
from benchmarks.fleet.device import SimulatedDevice
from benchmarks.fleet.scheduler import FixedClock


@dataclass(frozen=True)
class Histogram:
    """Arrivals per second from `start` (simulated seconds) to the last arrival."""

    start: float
    per_second: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.per_second)

    @property
    def span(self) -> int:
        return len(self.per_second)

    @property
    def mean(self) -> float:
        return self.total / self.span if self.span else 0.0

    @property
    def peak(self) -> int:
        return max(self.per_second, default=0)

    @property
    def peak_second(self) -> int:
        return self.per_second.index(self.peak) if self.per_second else 0

    @property
    def ratio(self) -> float:
        """The busiest second against the mean."""
        return self.peak / self.mean if self.mean else 0.0

    def buckets(self, width: int) -> list[int]:
        return [
            sum(self.per_second[at : at + width]) for at in range(0, len(self.per_second), width)
        ]


def histogram(times: Sequence[float], start: float) -> Histogram:
    seconds = Counter(max(0, math.floor(t - start)) for t in times)
    span = max(seconds, default=-1) + 1
    return Histogram(start, tuple(seconds.get(s, 0) for s in range(span)))


@dataclass
class DownSchedule:
    """What the fleet did while the authority was down."""

    retries: list[tuple[float, SimulatedDevice]] = field(default_factory=list)  # first after
    attempts: int = 0
    codes: Counter[str] = field(default_factory=Counter)


def schedule_while_down(
    installs: Sequence[tuple[float, SimulatedDevice]],
    origin: dt.datetime,
    recovery: float,
    *,
    connect: Callable[[], AuthorityClient],
    workers: int,
) -> DownSchedule:
    """Every device's attempts before `recovery` (simulated seconds), against the down
    authority; each device's first attempt at or after it."""
    local = threading.local()
    clients: list[AuthorityClient] = []
    lock = threading.Lock()
    down = DownSchedule()

    def attempts(item: tuple[float, SimulatedDevice]) -> tuple[float, SimulatedDevice] | None:
        at, device = item
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = connect()
            with lock:
                clients.append(client)
        when: dt.datetime | None = origin + dt.timedelta(seconds=at)
        while when is not None and (when - origin).total_seconds() < recovery:
            before = device.state.attempts
            when = device.wake(client, FixedClock(when))
            with lock:
                down.attempts += 1
                if device.state.attempts > before and device.state.last_error_code:
                    down.codes[device.state.last_error_code] += 1
        return None if when is None else ((when - origin).total_seconds(), device)

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="fleet-down") as pool:
            found = list(pool.map(attempts, installs))
    finally:
        for client in clients:
            client.close()
    down.retries = sorted((r for r in found if r is not None), key=lambda r: r[0])
    return down


def lifecycle_arrivals(
    installs: Sequence[tuple[float, SimulatedDevice]],
    recovery: float,
    timings: Timings,
    seed: int,
) -> list[float]:
    """The first attempt at or after `recovery` of each device, from the lifecycle alone:
    the same `step`, every attempt failing as while the authority is down, with `timings`
    (another retry_jitter, say) and fresh draws."""
    origin = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    found = []
    for at, device in installs:
        draws = random.Random(f"{seed}:{device.guid}")  # noqa: S311  # jitter, not secrecy
        phase = device_phase(device.guid)
        now = origin + dt.timedelta(seconds=at)
        state, _ = step(State(), Started(configured=True), now, Env(timings, 0.5, phase))
        while (now - origin).total_seconds() < recovery:
            env = Env(timings, draws.random(), phase)
            state, _ = step(state, Failed("connect_failed", "down"), now, env)
            assert state.next_attempt_at is not None
            now = state.next_attempt_at
            state, _ = step(state, Tick(), now, env)
        found.append((now - origin).total_seconds())
    return found


__all__ = ["DownSchedule", "Histogram", "histogram", "lifecycle_arrivals", "schedule_while_down"]
