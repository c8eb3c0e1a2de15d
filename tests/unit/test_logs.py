"""The agent's log lines: event IDs, key=value context, JSON mode, history.log, collapsed
retries, redaction on every handler, and the event table of docs/operations.md."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import events, logs
from agent.config import load
from agent.lifecycle import Failed, State
from agent.lifecycle_model import Phase, PolicyFound

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC)
LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d) (?P<level>[A-Z]+) +"
    r"(?P<event>HF\d{4}) \[(?P<phase>[a-z_-]+)\] (?P<message>.*)$"
)


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    logs.close()
    logs._streak.reset()
    logs.phase_filter.phase = "-"


def setup(log_dir: Path, **kwargs: object) -> logging.Logger:
    return logs.setup(log_dir / "agent.log", history_file=log_dir / "history.log", **kwargs)  # type: ignore[arg-type]


def lines(path: Path) -> list[str]:
    return path.read_text("utf-8").splitlines() if path.exists() else []


def test_a_line_has_time_with_offset_level_event_phase_sentence_and_context(
    log_dir: Path,
) -> None:
    logger = setup(log_dir)
    logs.phase_filter.phase = "awaiting_policy"
    logger.info(
        "policy found: organization %r",
        "Eng",
        extra=logs.event(events.POLICY_FOUND, org="Eng", note="two words"),
    )
    (line,) = lines(log_dir / "agent.log")
    match = LINE.match(line)
    assert match, line
    assert match["level"] == "INFO"
    assert match["event"] == "HF2002"
    assert match["phase"] == "awaiting_policy"
    assert match["message"] == "policy found: organization 'Eng' org=Eng note=\"two words\""


def test_a_line_without_an_id_gets_its_areas_general_id(log_dir: Path) -> None:
    logger = setup(log_dir)
    logger.info("something the daemon says")
    (line,) = lines(log_dir / "agent.log")
    assert " HF1000 " in line
    assert events.for_module("keys", "/opt/holdfast/agent/backup/keys.py") == "HF5000"
    assert events.for_module("sandbox", "/opt/holdfast/agent/sandbox.py") == "HF3000"
    assert events.for_module("transport", "/opt/holdfast/agent/transport.py") == "HF2000"
    assert events.for_module("daemon", "/opt/holdfast/agent/daemon.py") == "HF1000"


def test_json_mode_writes_one_object_per_line_with_the_context(log_dir: Path) -> None:
    logger = setup(log_dir, log_format="json")
    logs.phase_filter.phase = "backing_up"
    logger.warning("backup: %s", "cannot read a.txt", extra=logs.event(events.FILE_SKIPPED, n=3))
    (line,) = lines(log_dir / "agent.log")
    document = json.loads(line)
    assert document["event"] == "HF5102"
    assert document["level"] == "WARNING"
    assert document["phase"] == "backing_up"
    assert document["message"] == "backup: cannot read a.txt"
    assert document["n"] == 3
    assert dt.datetime.fromisoformat(document["time"]).utcoffset() is not None


def test_history_gets_the_user_facing_events_only(log_dir: Path) -> None:
    logger = setup(log_dir)
    logger.info("Retrieving deployment policy", extra=logs.event(events.POLICY_REQUESTED))
    logger.info("policy found", extra=logs.event(events.POLICY_FOUND))
    logger.info("a detail")
    logger.info("Completed backup: 3 files", extra=logs.event(events.BACKUP_COMPLETED))
    history = lines(log_dir / "history.log")
    assert [h.split(" ", 1)[1] for h in history] == ["policy found", "Completed backup: 3 files"]
    assert len(lines(log_dir / "agent.log")) == 4


def fail(before: State, n: int, code: str = "connect_failed") -> State:
    after = State(
        phase=Phase.AWAITING_POLICY,
        attempts=n,
        next_attempt_at=T0 + dt.timedelta(minutes=5 * n),
    )
    logs.log_transition(
        before,
        after,
        Failed(code, "cannot reach the authority at https://a.example: refused"),
        T0 + dt.timedelta(minutes=5 * (n - 1)),
    )
    return after


def test_identical_failures_collapse_and_recovery_is_said(log_dir: Path) -> None:
    setup(log_dir)
    state = State(phase=Phase.AWAITING_POLICY)
    for n in range(1, 11):
        state = fail(state, n)
    written = lines(log_dir / "agent.log")
    first = [w for w in written if "attempt failed" in w]
    still = [w for w in written if "still failing" in w]
    assert len(first) == 3 and all(" WARNING HF2101 " in w for w in first)
    # The 4th and 8th attempts, as errors; the others at debug level, not written.
    assert [re.search(r"(\d+) attempts since", w)[1] for w in still] == ["4", "8"]  # type: ignore[index]
    assert all(" ERROR   HF0102 " in w and "first=HF2101" in w for w in still)
    assert "code=connect_failed attempts=8" in still[-1]

    logs.log_transition(
        state,
        State(phase=Phase.AWAITING_REGISTRATION),
        PolicyFound("Eng", "silent"),
        T0 + dt.timedelta(hours=1),
    )
    recovered = lines(log_dir / "agent.log")[-2]
    assert " HF0103 " in recovered
    assert "recovered after 10 failed attempts since" in recovered
    # The summary has the first failure and the recovery, not the repeats.
    history = lines(log_dir / "history.log")
    assert len(history) == 2
    assert "attempt failed" in history[0] and "recovered after 10" in history[1]


def test_a_different_reason_starts_a_new_streak(log_dir: Path) -> None:
    setup(log_dir)
    state = State(phase=Phase.AWAITING_POLICY)
    for n in range(1, 5):
        state = fail(state, n)
    state = fail(state, 5, code="token_rotated")
    last = lines(log_dir / "agent.log")[-1]
    assert " WARNING HF2103 " in last and "attempt failed" in last


def test_a_backup_failure_without_an_id_of_its_own_is_a_backup_failure(log_dir: Path) -> None:
    setup(log_dir)
    logs.log_transition(
        State(phase=Phase.BACKING_UP),
        State(phase=Phase.BACKING_UP, attempts=1),
        Failed("store_damaged", "the authority's store is damaged"),
        T0,
    )
    assert " HF5101 " in lines(log_dir / "agent.log")[-1]


SECRET = "s3cret-token-0123456789"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_secret_reaches_no_file_whatever_path_it_takes(log_dir: Path, log_format: str) -> None:
    logger = setup(log_dir, log_format=log_format)
    logs.redactor.add(SECRET)
    try:
        logger.info("in the message %s", SECRET, extra=logs.event(events.POLICY_FOUND))
        logger.info("in the context", extra=logs.event(events.REGISTERED, token=SECRET))
        logger.warning(f"in an f-string {SECRET}", extra=logs.event(events.RECOVERED))
        try:
            raise ValueError(f"in an exception {SECRET}")
        except ValueError:
            logger.exception("with a traceback", extra=logs.event(events.LOCAL_ERROR))
    finally:
        logs.redactor.discard(SECRET)
    for name in ("agent.log", "history.log"):
        text = (log_dir / name).read_text("utf-8")
        assert SECRET not in text
        assert logs.REDACTED in text


def test_every_event_id_is_in_the_operations_guide_table() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text("utf-8")
    table = set(re.findall(r"^\| `(HF\d{4})` \|", guide, re.MULTILINE))
    assert table == set(events.CATALOGUE) | set(events.GENERAL)


def test_failure_codes_map_to_their_situations() -> None:
    assert events.for_failure("tls_pin_mismatch") == events.PIN_MISMATCH
    assert events.for_failure("token_rotated") == events.TOKEN_REFUSED
    assert events.for_failure("directory_user_not_found") == events.NOT_IN_DIRECTORY
    # Detection's `timeout` is not the network's.
    assert events.for_failure("timeout", "user detection failed: it ran 30 s") == (
        events.DETECTION_FAILED
    )
    assert events.for_failure("timeout", "the authority did not answer") == events.UNREACHABLE
    assert events.for_failure("something_new") == events.ATTEMPT_FAILED


def test_rotation_follows_agent_yaml(log_dir: Path) -> None:
    (log_dir / "agent.yaml").write_text("log_max_mb: 1\nlog_files: 2\n")
    config = load(log_dir / "agent.yaml")
    logger = setup(
        log_dir,
        max_bytes=int(config.setting("log_max_mb", None)) * 1024 * 1024,
        backups=int(config.setting("log_files", None)),
    )
    for n in range(3 * 1024):
        logger.info("line %d %s", n, "x" * 1000)
    names = sorted(p.name for p in log_dir.glob("agent.log*"))
    assert names == ["agent.log", "agent.log.1", "agent.log.2"]
    assert (log_dir / "agent.log.1").stat().st_size <= 1024 * 1024
