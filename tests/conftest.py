"""Shared test configuration."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

IN_CI = os.environ.get("CI") == "true"


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
