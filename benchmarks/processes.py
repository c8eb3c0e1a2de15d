"""Measuring one step: wall time of a command, CPU and peak memory of the processes doing it.

A command's own CPU comes from `os.wait4`, its peak RSS from GNU time (see `run_command`). The
long-running processes (the agent daemon, the authority) are measured around the step:
CPU from psutil before and after, peak RSS from `/proc/PID/status` VmHWM after resetting
it through `/proc/PID/clear_refs` (Linux 4.0+, needs the process's owner or root).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

GNU_TIME = "/usr/bin/time"  # Debian package `time`


@dataclass(frozen=True)
class CommandRun:
    """A finished command: how long, how much CPU, its peak RSS, and its output."""

    wall: float
    cpu: float
    peak_rss: int
    returncode: int
    output: str


def run_command(
    argv: Sequence[str], env: Mapping[str, str] | None = None, log: Path | None = None
) -> CommandRun:
    """Run `argv` to its exit; its wall time, CPU (user + system) and peak RSS.

    The peak RSS comes from GNU time's `%M`, not from our own `wait4`: Linux starts a forked
    child's ru_maxrss at its parent's RSS and keeps it across exec, so `wait4` would report
    this benchmark's memory for a small command.
    """
    out_path = log or Path(os.devnull)
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as maxrss:
        command = [*argv]
        if os.access(GNU_TIME, os.X_OK):
            command = [GNU_TIME, "-f", "%M", "-o", maxrss.name, *argv]
        with out_path.open("ab") as out:
            started = time.perf_counter()
            child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(child.pid, 0)
            wall = time.perf_counter() - started
        reported = maxrss.read().strip().splitlines()
    child.returncode = os.waitstatus_to_exitcode(status)
    peak_kib = int(reported[-1]) if reported and reported[-1].isdigit() else usage.ru_maxrss
    text = out_path.read_text(errors="replace")[-4000:] if log else ""
    return CommandRun(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_rss=peak_kib * 1024,
        returncode=child.returncode,
        output=text,
    )


def _family(pid: int) -> list[psutil.Process]:
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


@dataclass
class Watched:
    """A running process (and its children) observed around a step."""

    pid: int
    cpu_before: float = 0.0

    def cpu(self) -> float:
        total = 0.0
        for process in _family(self.pid):
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def start(self) -> None:
        self.cpu_before = self.cpu()
        for process in _family(self.pid):
            # Without the reset the peak covers the process's whole life: an upper bound.
            with contextlib.suppress(OSError):
                Path(f"/proc/{process.pid}/clear_refs").write_text("5")

    def cpu_since_start(self) -> float:
        return self.cpu() - self.cpu_before

    def peak_rss(self) -> int:
        peak = 0
        for process in _family(self.pid):
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        return peak


def tree_bytes(root: Path) -> int:
    """Bytes of the files under `root` (apparent sizes, like `du -sb`)."""
    total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
    return total


__all__ = ["CommandRun", "Watched", "run_command", "tree_bytes"]
