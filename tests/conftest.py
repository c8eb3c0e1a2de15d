"""Shared test configuration."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI") == "true"


def require_tool(available: bool, reason: str) -> None:
    """Skip with a one-line reason where a system package is missing, but fail in CI."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI must install it in .ci/run)")
    pytest.skip(reason)
