"""The benchmark's tables, in Markdown, from what the runs measured."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.fleet.census import Census
from benchmarks.fleet.device import KINDS, RequestTally
from benchmarks.fleet.outage import DownSchedule, Histogram
from benchmarks.fleet.scheduler import FleetRun

MB = 1e6


@dataclass
class StormResult:
    devices: int
    window: float
    workers: int
    serve_args: Sequence[str]
    run: FleetRun
    tally: RequestTally
    census: Census
    server_cpu: float
    client_cpu: float
    server_peak_rss: int
    to_snapshot: list[float] = field(default_factory=list)  # install to commit, real s

    @property
    def errors(self) -> int:
        """Requests that failed other than by overload, and devices that did not end
        registered to their user with their first snapshot (given up, crashed, misfiled)."""
        return self.tally.errors + self.census.incomplete


@dataclass
class OutageResult:
    devices: int
    down: float
    speed: float
    schedule: DownSchedule
    arrivals: Histogram
    jitters: dict[float, Histogram]  # the lifecycle alone, by retry_jitter
    run: FleetRun
    tally: RequestTally
    census: Census

    @property
    def errors(self) -> int:
        return self.tally.errors + self.census.incomplete

    @property
    def spread_checked(self) -> bool:
        """Below one arrival a second on average, a second with 3 is not a spike."""
        return self.arrivals.mean >= 1.0


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def _n(value: float) -> str:
    return f"{value:,.0f}"


def requests_per_second(tally: RequestTally) -> tuple[float, int]:
    """Mean and busiest second of the requests' start times."""
    if not tally.started_at:
        return 0.0, 0
    first = min(tally.started_at)
    seconds = Counter(int(t - first) for t in tally.started_at)
    span = max(seconds) + 1
    return len(tally.started_at) / span, max(seconds.values())


def request_table(tally: RequestTally) -> list[str]:
    lines = [
        "| request | answered | ok | overload (503/429) | errors | p50 ms | p95 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in [*KINDS, *sorted(set(tally.kinds) - set(KINDS))]:
        k = tally.kinds[kind]
        codes = ", ".join(f"{c} {n}" for c, n in sorted(k.error_codes.items()))
        lines.append(
            f"| {kind} | {_n(k.answered)} | {_n(k.ok)} | {_n(k.overload)} "
            f"| {_n(k.errors)}{f' ({codes})' if codes else ''} "
            f"| {1000 * percentile(k.seconds, 0.5):.0f} | {1000 * percentile(k.seconds, 0.95):.0f} "
            f"| {1000 * max(k.seconds, default=0.0):.0f} |"
        )
    return lines


def storm_table(r: StormResult) -> list[str]:
    run, census = r.run, r.census
    mean_rps, peak_rps = requests_per_second(r.tally)
    total = sum(k.answered for k in r.tally.kinds.values())
    serve = " ".join(r.serve_args) or "(defaults)"
    lines = [
        "| fleet storm | |",
        "| --- | --- |",
        f"| devices | {_n(r.devices)}, installed within {r.window:g} s |",
        f"| simulator | {r.workers} workers, one kept-alive pinned TLS connection each |",
        f"| authority | `holdfast-authority serve {serve}`, SQLite |",
        f"| wall | {run.wall:.1f} s (simulated {run.simulated:.0f} s, of which "
        f"{run.skipped:.0f} s skipped waiting out retries) |",
        f"| registered (the authority's device list) | {_n(census.registered)} |",
        f"| first snapshots committed | {_n(census.committed)} |",
        f"| requests | {_n(total)}: {mean_rps:.0f}/s mean, {peak_rps}/s in the busiest second |",
        f"| wait for a worker (install to first request) | p50 "
        f"{percentile(run.start_delays, 0.5):.1f} s, p95 {percentile(run.start_delays, 0.95):.1f}"
        f" s, max {max(run.start_delays, default=0.0):.1f} s |",
        f"| install to first snapshot | p50 {percentile(r.to_snapshot, 0.5):.1f} s, p95 "
        f"{percentile(r.to_snapshot, 0.95):.1f} s, max {max(r.to_snapshot, default=0.0):.1f} s |",
        f"| authority CPU | {r.server_cpu:.0f} s ({1000 * r.server_cpu / max(1, r.devices):.1f} ms"
        " a device) |",
        f"| simulator CPU | {r.client_cpu:.0f} s ({1000 * r.client_cpu / max(1, r.devices):.1f} ms"
        " a device) |",
        f"| authority peak RSS | {r.server_peak_rss / MB:.0f} MB |",
    ]
    if run.abandoned or run.crashed:
        lines.append(
            f"| gave up | {len(run.abandoned)} past the horizon, {len(run.crashed)} crashed |"
        )
    return [*lines, "", *request_table(r.tally)]


def outage_table(r: OutageResult) -> list[str]:
    a, down = r.arrivals, r.schedule
    codes = ", ".join(f"{c} {_n(n)}" for c, n in down.codes.most_common())
    width = 30
    lines = [
        "| outage | |",
        "| --- | --- |",
        f"| authority down | the first {r.down:.0f} simulated s ({r.down / 60:.0f} min): nothing "
        "listens on its port |",
        f"| devices | {_n(r.devices)}, installed within the first minute |",
        f"| attempts while down | {_n(down.attempts)} ({codes or 'none failed'}) |",
        f"| retries after recovery | {_n(a.total)} over {a.span} s: mean {a.mean:.1f}/s, "
        f"busiest second {a.peak} at +{a.peak_second} s ({a.ratio:.2f}x the mean) |",
        f"| per {width} s after recovery | {', '.join(_n(b) for b in a.buckets(width))} |",
        *(
            f"| the lifecycle alone, retry_jitter {jitter:g} | busiest second {h.peak}, "
            f"{h.ratio:.2f}x its mean of {h.mean:.1f}/s over {h.span} s |"
            for jitter, h in sorted(r.jitters.items())
        ),
        f"| replayed against the authority at {r.speed:g}x speed | wall {r.run.wall:.1f} s; "
        f"registered {_n(r.census.registered)}, committed {_n(r.census.committed)}, errors "
        f"{_n(r.errors)}, overload answers {_n(r.tally.overload)}, duplicates "
        f"{r.census.duplicates} |",
    ]
    return [*lines, "", *request_table(r.tally)]


__all__ = ["OutageResult", "StormResult", "outage_table", "percentile", "storm_table"]
