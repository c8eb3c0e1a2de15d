"""The agent over months: memory and CPU of real agent daemons that wait, retry and back up.

    .venv/bin/python benchmarks/soak.py [--check] [--long] [--retries N] [--backups N] ...

Three real agents (`holdfast run --deploy-args ...`) at once, measured from outside with
psutil: RSS, user + system CPU, and the context switches of all their threads (from
/proc/PID/task/*/status: every wake-up counts one).

- idle in awaiting_policy: installer arguments naming a closed port, `policy_retry_seconds`
  of a week. After its first failed attempt and 3 s of settling: RSS, then CPU and wake-ups
  over an idle window, scaled to an hour.
- retrying: the same with `policy_retry_seconds: 0.1` (agent.yaml alone may go under a
  second) and no jitter: RSS after the 10th failed attempt and after N more.
- backing up: a real authority (as in backup_vs_restic.py), a home of 100 small files. With
  a week's interval: after the first backup, RSS, CPU and wake-ups over the idle window.
  Restarted with `backup_interval_seconds: 1`: RSS after its first (no-change) backup and
  after N more, each sampled between two backups.

The defaults (2,000 retries, 300 backups, 60 s) take 7-8 minutes; `--long` (`make soak`)
ten times as many retries and backups and a 10-minute window, over an hour.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.paths import AgentPaths
from agent.status import collect
from benchmarks.holdfast_side import WEEK, Holdfast

MB = 1e6
IDLE_RSS_TARGET = 35 * MB
GROWTH_TARGET = 5 * MB
CPU_PER_HOUR_TARGET = 1.0  # seconds; the clock-tick resolution is 0.01 s in the window
WAKEUPS_PER_HOUR_TARGET = 1.0  # the loop's own cap: it sleeps at most an hour at a time
SETTLE_SECONDS = 3.0
WARMUP_RETRIES = 10
DEFAULT_POLICY_RETRY = 300.0


@dataclass(frozen=True)
class Sample:
    """One look at a process from outside."""

    rss: int
    cpu: float
    wakeups: int  # context switches of every thread so far
    threads: int


def sample(pid: int) -> Sample:
    process = psutil.Process(pid)
    times = process.cpu_times()
    wakeups = threads = 0
    for task in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = task.read_text()
        except OSError:
            continue  # the thread ended in between
        threads += 1
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                wakeups += int(line.split()[1])
    return Sample(process.memory_info().rss, times.user + times.system, wakeups, threads)


@dataclass(frozen=True)
class Idle:
    """An agent left alone between two attempts."""

    rss: int
    cpu: float
    wakeups: int
    threads: int
    seconds: float

    @property
    def cpu_per_hour(self) -> float:
        return self.cpu * 3600 / self.seconds

    @property
    def wakeups_per_hour(self) -> float:
        return self.wakeups * 3600 / self.seconds


def watch_idle(pid: int, seconds: float) -> Idle:
    time.sleep(SETTLE_SECONDS)  # the attempt's last log line and state file are written
    before, started = sample(pid), time.monotonic()
    time.sleep(seconds)
    after, elapsed = sample(pid), time.monotonic() - started
    return Idle(
        after.rss, after.cpu - before.cpu, after.wakeups - before.wakeups, after.threads, elapsed
    )


@dataclass
class Growth:
    """RSS over many repetitions of one thing, sampled as it goes."""

    what: str
    count: int
    rss: list[tuple[int, int]] = field(default_factory=list)  # (done, rss)
    cpu: float = 0.0
    seconds: float = 0.0

    @property
    def start(self) -> int:
        return self.rss[0][1]

    @property
    def end(self) -> int:
        return self.rss[-1][1]

    @property
    def middle(self) -> int:
        return next(rss for done, rss in self.rss if done >= self.count // 2)

    @property
    def peak(self) -> int:
        return max(rss for _done, rss in self.rss)


def track(pid: int, done: Callable[[], int], growth: Growth, timeout: float, poll: float) -> Growth:
    """Sample RSS each time `done()` moves, from 0 until it reaches `growth.count`."""
    first = sample(pid)
    started = time.monotonic()
    growth.rss.append((0, first.rss))
    last = 0
    while last < growth.count:
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{growth.what}: only {last} of {growth.count} in {timeout:.0f} s")
        time.sleep(poll)
        now = done()
        if now != last:
            last = now
            growth.rss.append((now, sample(pid).rss))
    growth.cpu = sample(pid).cpu - first.cpu
    growth.seconds = time.monotonic() - started
    return growth


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LoneAgent:
    """An agent whose authority never answers: its installer arguments name a closed port."""

    home: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, settings: dict[str, Any]) -> int:
        (self.home / "conf").mkdir(parents=True, exist_ok=True)
        machine_id = self.home / "machine-id"
        machine_id.write_text(os.urandom(16).hex() + "\n")
        settings = {**settings, "machine_id_file": str(machine_id)}
        (self.home / "conf" / "agent.yaml").write_text(yaml.safe_dump(settings))
        args = (
            f"DEPLOYMENT_URL=https://127.0.0.1:{_closed_port()}"
            f"&DEPLOYMENT_POLICY_TOKEN={uuid.uuid4()}&SSL_WHITELIST={'ab' * 20}"
        )
        command = [sys.executable, "-m", "agent", "run", "--home", str(self.home)]
        with (self.home / "agent.out").open("ab") as out:
            self.process = subprocess.Popen(
                [*command, "--deploy-args", args], stdout=out, stderr=subprocess.STDOUT
            )
        return self.process.pid

    def attempts(self) -> int:
        if self.process is not None and self.process.poll() is not None:
            raise SystemExit(f"the agent in {self.home} exited; see its agent.out")
        return int(collect(AgentPaths.under(self.home))["attempts"])

    def wait_attempts(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.attempts() < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"the agent in {self.home} made no {count} attempts")
            time.sleep(0.05)

    def stop(self) -> None:
        stop(self.process)


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def idle_awaiting_policy(root: Path, seconds: float) -> Idle:
    agent = LoneAgent(root / "idle-agent")
    try:
        pid = agent.start({"policy_retry_seconds": WEEK, "retry_jitter": 0})
        agent.wait_attempts(1, timeout=60)
        return watch_idle(pid, seconds)
    finally:
        agent.stop()


def policy_retries(root: Path, count: int) -> Growth:
    agent = LoneAgent(root / "retrying-agent")
    try:
        pid = agent.start({"policy_retry_seconds": 0.1, "retry_jitter": 0})
        agent.wait_attempts(WARMUP_RETRIES, timeout=60)
        growth = Growth(f"{count:,} policy retries at 0.1 s", count)
        return track(
            pid, lambda: agent.attempts() - WARMUP_RETRIES, growth, count * 1.0 + 120, 0.25
        )
    finally:
        agent.stop()


def small_home(home: Path) -> None:
    for n in range(100):
        folder = home / f"folder-{n % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"note-{n}.txt").write_text(f"note {n}\n" * (50 + 40 * n))


def backups(root: Path, count: int, seconds: float) -> tuple[Idle, Growth]:
    home = root / "home" / "soak"
    small_home(home)
    home.parent.chmod(0o755)
    holdfast = Holdfast(root / "holdfast", home)
    try:
        holdfast.start_authority()
        holdfast.start_agent({"retry_jitter": 0})  # a week's interval: one backup, then idle
        assert holdfast.agent is not None
        idle = watch_idle(holdfast.agent.pid, seconds)
        stop(holdfast.agent)
        paths = AgentPaths.under(holdfast.agent_home)
        seen = [str(collect(paths)["last_backup"]["finished_at"])]
        # A restart resumes backing_up with a backup at once, then one a second after each.
        holdfast.start_agent({"retry_jitter": 0, "backup_interval_seconds": 1})
        agent = holdfast.agent

        def finished() -> str:
            if agent.poll() is not None:
                raise SystemExit("the backing-up agent exited; see agent.out")
            return str((collect(paths)["last_backup"] or {}).get("finished_at"))

        def backups_done() -> int:
            latest = finished()
            if latest != seen[-1]:
                seen.append(latest)
            return len(seen) - 2  # the one before the restart, the restart's own first

        deadline = time.monotonic() + 120
        while backups_done() < 0:
            if time.monotonic() > deadline:
                raise SystemExit("the restarted agent made no backup within 120 s")
            time.sleep(0.02)
        growth = Growth(f"{count:,} no-change backups, 1 s apart", count)
        return idle, track(agent.pid, backups_done, growth, count * 10.0 + 120, 0.02)
    finally:
        holdfast.stop()


@dataclass(frozen=True)
class Result:
    measurement: str
    figure: str
    target: str
    met: bool | None  # None: reported, no target


def _idle_rows(name: str, idle: Idle, rss_target: float | None) -> list[Result]:
    rss = Result(
        f"RSS idle in {name}",
        f"{idle.rss / MB:.1f} MB ({idle.threads} threads)",
        f"<= {rss_target / MB:.0f} MB" if rss_target else "-",
        idle.rss <= rss_target if rss_target else None,
    )
    quiet = (
        idle.cpu_per_hour <= CPU_PER_HOUR_TARGET
        and idle.wakeups_per_hour <= WAKEUPS_PER_HOUR_TARGET
    )
    cpu = Result(
        f"CPU waiting in {name}",
        f"{idle.cpu_per_hour:.2f} s/h; {idle.wakeups} wake-ups in {idle.seconds:.0f} s",
        f"<= {CPU_PER_HOUR_TARGET:g} s/h, <= {WAKEUPS_PER_HOUR_TARGET:g} wake-up/h",
        quiet,
    )
    return [rss, cpu]


def _growth_row(growth: Growth) -> Result:
    grew = growth.end - growth.start
    return Result(
        f"RSS growth over {growth.what}",
        f"{growth.start / MB:.1f} -> {growth.end / MB:.1f} MB ({grew / MB:+.1f}; second half "
        f"{(growth.end - growth.middle) / MB:+.1f}; peak {growth.peak / MB:.1f}; "
        f"{growth.seconds:.0f} s)",
        f"< {GROWTH_TARGET / MB:.0f} MB",
        grew < GROWTH_TARGET,
    )


def results(waiting: Idle, retries: Growth, backed_up: Idle, backing: Growth) -> list[Result]:
    per_retry = retries.cpu / retries.count
    return [
        *_idle_rows("awaiting_policy", waiting, IDLE_RSS_TARGET),
        Result(
            "CPU per policy retry",
            f"{per_retry * 1000:.1f} ms: {per_retry * 3600 / DEFAULT_POLICY_RETRY:.2f} s/h "
            f"at the default {DEFAULT_POLICY_RETRY:.0f} s",
            "-",
            None,
        ),
        _growth_row(retries),
        *_idle_rows("backing_up, between backups", backed_up, None),
        Result(
            "RSS in backing_up between 1 s backups",
            f"{backing.start / MB:.1f}-{backing.peak / MB:.1f} MB; "
            f"CPU {backing.cpu / backing.count:.2f} s a backup",
            "-",
            None,
        ),
        _growth_row(backing),
    ]


def table(rows: list[Result]) -> list[str]:
    lines = ["| measurement | figure | target | result |", "| --- | --- | --- | --- |"]
    for row in rows:
        verdict = "-" if row.met is None else ("PASS" if row.met else "MISS")
        lines.append(f"| {row.measurement} | {row.figure} | {row.target} | {verdict} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retries", type=int, help="policy retries at 0.1 s (default 2000)")
    parser.add_argument("--backups", type=int, help="no-change backups (default 300)")
    parser.add_argument("--idle-seconds", type=float, help="idle window (default 60)")
    parser.add_argument("--long", action="store_true", help="10x the retries and backups, 600 s")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new temp folder)")
    options = parser.parse_args(argv)
    scale = 10 if options.long else 1
    retries = options.retries or 2000 * scale
    count = options.backups or 300 * scale
    seconds = options.idle_seconds or 60.0 * scale
    if options.workdir:
        options.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="holdfast-soak-", dir=options.workdir))
    root.chmod(0o755)  # the detection script runs as an unprivileged account
    load = os.getloadavg()
    print(f"work folder {root}; {os.cpu_count()} CPUs; load average {load[0]:.2f}")
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(3) as pool:
            waiting = pool.submit(idle_awaiting_policy, root, seconds)
            retrying = pool.submit(policy_retries, root, retries)
            backing = pool.submit(backups, root, count, seconds)
            backed_up, backed = backing.result()
            rows = results(waiting.result(), retrying.result(), backed_up, backed)
    finally:
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    end_load = os.getloadavg()
    print()
    print(
        f"{dt.date.today().isoformat()}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} at the start, {end_load[0]:.2f} at the end, "
        f"{time.monotonic() - started:.0f} s (--retries {retries} --backups {count} "
        f"--idle-seconds {seconds:g})"
    )
    print("\n".join(table(rows)))
    print()
    for row in rows:
        if row.met is not None:
            print(f"{'PASS' if row.met else 'MISS'}  {row.measurement}: {row.figure}")
    return 1 if options.check and not all(row.met is not False for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
