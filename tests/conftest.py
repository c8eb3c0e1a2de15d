"""Shared test configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent_process import Agent

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    """A real agent (`holdfast run` in a process of its own, not yet started) with its
    folders under tmp_path and the tests' agent.yaml; stopped at the end."""
    running = Agent(home=tmp_path / "agent")
    running.configure()
    try:
        yield running
    finally:
        running.stop()


def require_tool(available: bool, reason: str) -> None:
    """Skip with a one-line reason where a system package is missing, but fail in CI."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI must install it in .ci/run)")
    pytest.skip(reason)


def private_mounts_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.fixture
def private_mounts() -> None:
    """Root, and `unshare -m` (util-linux) to mount a small tmpfs only one process sees (a
    full disk, for real)."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the full-disk scenario needs root to mount a tmpfs (CI runs as root)")
        pytest.skip("the full-disk scenario needs root to mount a tmpfs")
    require_tool(private_mounts_work(), "unshare -m (util-linux) cannot make a mount namespace")
