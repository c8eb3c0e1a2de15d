"""Holdfast against restic on the same generated home, side by side, in one run.

    .venv/bin/python benchmarks/backup_vs_restic.py [--size-mb 1024] [--files 20000] [--check]

Steps: (a) first backup, (b) no-change backup, (c) backup after changing 1 % of the files,
(d) full restore, verified byte for byte. For each: wall time of the command that does the
work (`holdfast backup-now` / `holdfast restore`; `restic backup` / `restic restore`) with
the agent daemon and the authority already running; CPU of the agent, the command and the
authority together against restic's; peak RSS of the agent (the authority's beside it);
stored bytes (the authority's `DATA/store` against the restic repository).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.dataset import change_one_percent, generate
from benchmarks.holdfast_side import Holdfast
from benchmarks.processes import CommandRun, Watched, run_command, tree_bytes
from benchmarks.verify import differences

RESTIC = shutil.which("restic") or "restic"
WALL_TARGET = 1.0
STORED_TARGET = 1.05
RSS_TARGET = 150 * 1000 * 1000
MB = 1e6


@dataclass(frozen=True)
class Side:
    """One tool's figures for one step."""

    wall: float
    cpu: float
    rss: int
    stored: int | None
    server_rss: int | None = None


@dataclass(frozen=True)
class Step:
    name: str
    holdfast: Side
    restic: Side


def _check(run: CommandRun, what: str) -> None:
    if run.returncode != 0:
        raise SystemExit(f"{what} exited {run.returncode}:\n{run.output}")


class Bench:
    """The two tools, set up once, and the steps run against both."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home" / "bench"
        self.holdfast = Holdfast(root / "holdfast", self.home)
        self.repo = root / "restic-repo"
        self.restic_env = {
            **os.environ,
            "RESTIC_PASSWORD": "benchmark",
            "RESTIC_REPOSITORY": str(self.repo),
            "RESTIC_CACHE_DIR": str(root / "restic-cache"),
        }

    def restic(self, *args: str) -> CommandRun:
        run = run_command([RESTIC, *args], self.restic_env, self.root / "restic.out")
        _check(run, f"restic {args[0]}")
        return run

    def holdfast_step(self, *args: str, store: bool) -> Side:
        agent = Watched(self.holdfast.agent.pid)  # type: ignore[union-attr]
        authority = Watched(self.holdfast.authority.pid)  # type: ignore[union-attr]
        agent.start()
        authority.start()
        run = run_command(self.holdfast.command(*args), log=self.root / "holdfast.out")
        _check(run, f"holdfast {args[0]}")
        return Side(
            wall=run.wall,
            cpu=run.cpu + agent.cpu_since_start() + authority.cpu_since_start(),
            rss=max(run.peak_rss, agent.peak_rss()),
            stored=tree_bytes(self.holdfast.store) if store else None,
            server_rss=authority.peak_rss(),
        )

    def restic_backup(self) -> Side:
        run = self.restic("backup", "--host", "bench", str(self.home))
        return Side(run.wall, run.cpu, run.peak_rss, tree_bytes(self.repo))

    def backup(self, name: str) -> Step:
        return Step(name, self.holdfast_step("backup-now", store=True), self.restic_backup())

    def restore(self) -> Step:
        ours, theirs = self.root / "restored-holdfast", self.root / "restored-restic"
        holdfast = self.holdfast_step("restore", "--to", str(ours), store=False)
        run = self.restic("restore", "latest", "--target", str(theirs))
        restic = Side(run.wall, run.cpu, run.peak_rss, None)
        for tool, tree in (("holdfast", ours), ("restic", theirs / self.home.relative_to("/"))):
            problems = differences(self.home, tree)
            if problems:
                raise SystemExit(f"{tool} restore differs from the source:\n" + "\n".join(problems))
            print(f"  {tool} restore verified byte for byte (contents, modes, links)")
        return Step("(d) full restore", holdfast, restic)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def table(steps: list[Step]) -> list[str]:
    """The results as a Markdown table."""
    lines = [
        "| step | Holdfast wall s | restic wall s | wall ratio | Holdfast CPU s | restic CPU s "
        "| CPU ratio | agent peak RSS MB | authority peak RSS MB | restic peak RSS MB "
        "| Holdfast stored MB | restic stored MB | stored ratio |",
        "|" + " --- |" * 13,
    ]
    for s in steps:
        h, r = s.holdfast, s.restic
        stored = (
            f"{h.stored / MB:.1f} | {r.stored / MB:.1f} | {_ratio(h.stored, r.stored):.2f}"
            if h.stored is not None and r.stored is not None
            else "- | - | -"
        )
        lines.append(
            f"| {s.name} | {h.wall:.2f} | {r.wall:.2f} | {_ratio(h.wall, r.wall):.2f} "
            f"| {h.cpu:.2f} | {r.cpu:.2f} | {_ratio(h.cpu, r.cpu):.2f} "
            f"| {h.rss / MB:.0f} | {(h.server_rss or 0) / MB:.0f} | {r.rss / MB:.0f} | {stored} |"
        )
    return lines


def targets(steps: list[Step]) -> list[tuple[bool, str]]:
    """Each target: met or not, and the line that says so."""
    results = []
    for s in steps:
        ratio = _ratio(s.holdfast.wall, s.restic.wall)
        results.append((ratio <= WALL_TARGET, f"wall {s.name}: ratio {ratio:.2f} (<= 1.00)"))
    last = [s for s in steps if s.holdfast.stored is not None][-1]
    stored = _ratio(last.holdfast.stored or 0, last.restic.stored or 0)
    results.append(
        (stored <= STORED_TARGET, f"stored bytes after {last.name}: {stored:.2f} (<= 1.05)")
    )
    peak = max(s.holdfast.rss for s in steps)
    results.append((peak < RSS_TARGET, f"agent peak RSS: {peak / MB:.0f} MB (< 150 MB)"))
    return results


def restic_version() -> str:
    found = subprocess.run([RESTIC, "version"], capture_output=True, text=True, check=False)
    return found.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the home (MiB)")
    parser.add_argument("--files", type=int, default=20000, help="files in the home")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new temp folder)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated home")
    options = parser.parse_args(argv)
    if shutil.which(RESTIC) is None:
        raise SystemExit("restic is not installed: apt-get install restic")
    if options.workdir:
        options.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="holdfast-bench-", dir=options.workdir))
    root.chmod(0o755)  # the detection script runs as an unprivileged account
    bench = Bench(root)
    print(f"work folder {root}; {os.cpu_count()} CPUs; {restic_version()}")
    try:
        bench.home.mkdir(parents=True)
        bench.home.parent.chmod(0o755)
        (bench.home / "placeholder.txt").write_text("the home before the benchmark's data\n")
        bench.holdfast.start_authority()
        bench.holdfast.start_agent()  # its automatic first backup: the placeholder only
        (bench.home / "placeholder.txt").unlink()
        started = time.perf_counter()
        data = generate(bench.home, options.size_mb, options.files, options.seed)
        print(
            f"generated {data.files} files, {data.bytes / MB:.0f} MB ({data.duplicates} "
            f"duplicates) in {time.perf_counter() - started:.0f} s"
        )
        bench.restic("init")
        steps = [bench.backup("(a) first backup")]
        print(f"  {steps[-1]}")
        steps.append(bench.backup("(b) no-change backup"))
        print(f"  {steps[-1]}")
        change = change_one_percent(bench.home)
        print(
            f"changed {change.files} files: {change.appended} appended, {change.rewritten} "
            f"rewritten inside, {change.created} new, {change.deleted} deleted"
        )
        steps.append(bench.backup("(c) 1 % changed"))
        print(f"  {steps[-1]}")
        steps.append(bench.restore())
    finally:
        bench.holdfast.stop()
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(
        f"{dt.date.today().isoformat()}, {os.cpu_count()} CPUs, home of {data.files} files, "
        f"{data.bytes / MB:.0f} MB (--size-mb {options.size_mb} --files {options.files})"
    )
    print("\n".join(table(steps)))
    print()
    results = targets(steps)
    for met, line in results:
        print(f"{'PASS' if met else 'MISS'}  {line}")
    return 1 if options.check and not all(met for met, _ in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
