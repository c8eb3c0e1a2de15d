"""`conf/agent.yaml`: the bounds of the intervals it sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load
from agent.errors import UsageError


def test_policy_retry_seconds_takes_a_tenth_of_a_second(tmp_path: Path) -> None:
    # benchmarks/soak.py drives 2,000 real policy retries at 0.1 s each.
    (tmp_path / "agent.yaml").write_text("policy_retry_seconds: 0.1\n")
    assert load(tmp_path / "agent.yaml").timings(None).policy_retry == 0.1


def test_policy_retry_seconds_under_a_tenth_of_a_second_is_refused_by_name(
    tmp_path: Path,
) -> None:
    (tmp_path / "agent.yaml").write_text("policy_retry_seconds: 0.05\n")
    with pytest.raises(UsageError, match=r"policy_retry_seconds must be between 0.1 and 604800"):
        load(tmp_path / "agent.yaml")


@pytest.mark.parametrize("key", ["registration_retry_seconds", "backup_interval_seconds"])
def test_the_other_intervals_stay_whole_seconds(tmp_path: Path, key: str) -> None:
    (tmp_path / "agent.yaml").write_text(f"{key}: 0.5\n")
    with pytest.raises(UsageError, match=rf"{key} must be a whole number of seconds"):
        load(tmp_path / "agent.yaml")


def test_a_policy_cannot_set_a_policy_retry_under_a_second(tmp_path: Path) -> None:
    # Only the device's own agent.yaml may go that low; a policy's 0.5 is ignored.
    (tmp_path / "agent.yaml").write_text("log_level: info\n")
    config = load(tmp_path / "agent.yaml")
    assert config.timings({"policy_retry_seconds": 0.5}).policy_retry == 300.0
    assert config.timings({"policy_retry_seconds": 60}).policy_retry == 60.0
