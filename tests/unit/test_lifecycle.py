"""The agent's deployment lifecycle: every transition, its retries and jitter, with no clock."""

from __future__ import annotations

import copy
import datetime as dt
import random
import statistics
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.lifecycle import (
    Action,
    BackupDone,
    BackupRequested,
    CheckedIn,
    Configured,
    CredentialRejected,
    Env,
    Event,
    Failed,
    FetchPolicy,
    Phase,
    PolicyFound,
    Register,
    Registered,
    RunBackup,
    RunDetection,
    SignedIn,
    StartBackups,
    Started,
    StartRequested,
    State,
    Step,
    StopRequested,
    Tick,
    Timings,
    UserDetected,
    device_phase,
    jittered,
    step,
)

UNCONFIGURED, AWAITING_POLICY = Phase.UNCONFIGURED, Phase.AWAITING_POLICY
AWAITING_REGISTRATION, AWAITING_SIGN_IN = Phase.AWAITING_REGISTRATION, Phase.AWAITING_SIGN_IN
BACKING_UP, STOPPED = Phase.BACKING_UP, Phase.STOPPED
IDLE, FETCHING, DETECTING = Step.IDLE, Step.FETCHING_POLICY, Step.DETECTING
REGISTERING, CHECKING_IN = Step.REGISTERING, Step.CHECKING_IN
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
EARLIER = NOW - dt.timedelta(days=1)
TIMINGS = Timings(policy_retry=300.0, registration_retry=3600.0, backup_interval=900.0, jitter=0.0)
ENV = Env(timings=TIMINGS)
CONFIGURED = (AWAITING_POLICY, AWAITING_REGISTRATION, AWAITING_SIGN_IN)
NOT_STOPPED = [p for p in Phase if p != STOPPED]
IN_FLIGHT = [s for s in Step if s != IDLE]
SILENT = PolicyFound(org="acme", registration="silent")
MANUAL = PolicyFound(org="acme", registration="manual")
DOWN = Failed(code="unreachable", message="Down.")
DETECTED = UserDetected(username="alice@example.com", user_home="/home/alice")
REGISTERED = Registered(
    username="alice@example.com", user_home="/home/alice", registered_at="2026-01-01T00:00:00Z"
)
SIGNED_IN = SignedIn(
    username="alice@example.org", user_home="/home/alice", registered_at="2026-01-01T00:00:00Z"
)


def after(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def at(phase: Phase, step_: Step = IDLE, **changes: Any) -> State:
    """A state that entered `phase` a day ago, with two failed attempts behind it."""
    error = {"last_error": "The authority did not answer.", "last_error_code": "unreachable"}
    fields = {"since": EARLIER, "next_attempt_at": NOW, "attempts": 2, **error, **changes}
    return State(phase=phase, step=step_, **fields)


def entered(phase: Phase, step_: Step = IDLE, **changes: Any) -> State:
    """`at(phase)` as it looks having just entered `phase`: no failures yet, its clock at NOW."""
    fresh = {"since": NOW, "attempts": 0, "last_error": None, "last_error_code": None}
    return at(phase, step_, **{**fresh, **changes})


def failing(phase: Phase, failed: Failed, wait: float, **changes: Any) -> State:
    """`at(phase)` after `failed` ended its third attempt: the next one `wait` seconds later."""
    error = {"last_error": failed.message, "last_error_code": failed.code, "attempts": 3}
    return at(phase, next_attempt_at=after(wait), **{**error, **changes})


# UNCONFIGURED


def test_unconfigured_to_awaiting_policy_on_start_with_args() -> None:
    state, actions = step(State(), Started(configured=True), NOW, ENV)
    expected = State(phase=AWAITING_POLICY, since=NOW, next_attempt_at=NOW, step=FETCHING)
    assert (state, actions) == (expected, [FetchPolicy()])


def test_unconfigured_stays_on_start_without_args() -> None:
    state, actions = step(State(), Started(configured=False), NOW, ENV)
    assert (state, actions) == (State(since=NOW), [])


def test_unconfigured_to_awaiting_policy_on_configured() -> None:
    state, actions = step(State(since=EARLIER), Configured(), NOW, ENV)
    assert (state.phase, state.since, state.step) == (AWAITING_POLICY, NOW, FETCHING)
    assert (state.next_attempt_at, actions) == (NOW, [FetchPolicy()])


# AWAITING_POLICY


def test_awaiting_policy_to_awaiting_registration_on_policy_found() -> None:
    state, actions = step(at(AWAITING_POLICY, FETCHING), SILENT, NOW, ENV)
    expected = entered(AWAITING_REGISTRATION, DETECTING, org="acme", registration="silent")
    assert (state, actions) == (expected, [RunDetection()])


@pytest.mark.parametrize("permanent", [False, True])
def test_awaiting_policy_stays_on_failure_and_retries_after_policy_retry(permanent: bool) -> None:
    failed = Failed(code="policy_not_found", message="No policy.", permanent=permanent)
    state, actions = step(at(AWAITING_POLICY, FETCHING), failed, NOW, ENV)
    assert (state, actions) == (failing(AWAITING_POLICY, failed, 300), [])
    assert step(state, Tick(), after(299), ENV) == (state, [])
    assert step(state, Tick(), after(300), ENV) == (replace(state, step=FETCHING), [FetchPolicy()])


def test_awaiting_policy_to_awaiting_registration_on_manual_policy_detects_the_user() -> None:
    state, actions = step(at(AWAITING_POLICY, FETCHING), MANUAL, NOW, ENV)
    expected = entered(AWAITING_REGISTRATION, DETECTING, org="acme", registration="manual")
    assert (state, actions) == (expected, [RunDetection()])


# AWAITING_REGISTRATION


def test_awaiting_registration_attempt_fetches_detects_then_registers() -> None:
    state, actions = step(at(AWAITING_REGISTRATION), Tick(), NOW, ENV)
    assert (state, actions) == (at(AWAITING_REGISTRATION, FETCHING), [FetchPolicy()])
    # The same phase: the attempt neither restarts its clock nor forgets its failures.
    state, actions = step(state, SILENT, NOW, ENV)
    detecting = at(AWAITING_REGISTRATION, DETECTING, org="acme", registration="silent")
    assert (state, actions) == (detecting, [RunDetection()])
    state, actions = step(state, DETECTED, NOW, ENV)
    register = Register(username="alice@example.com", user_home="/home/alice")
    assert (state, actions) == (replace(detecting, step=REGISTERING), [register])


def test_awaiting_registration_to_backing_up_on_registered() -> None:
    state, actions = step(at(AWAITING_REGISTRATION, REGISTERING), REGISTERED, NOW, ENV)
    expected = entered(BACKING_UP, username="alice@example.com", user_home="/home/alice")
    # The first full backup is due at once.
    expected = replace(expected, registered_at="2026-01-01T00:00:00Z", next_attempt_at=NOW)
    assert (state, actions) == (expected, [StartBackups()])


def failed_registration_attempt(step_: Step, failed: Failed) -> None:
    state, actions = step(at(AWAITING_REGISTRATION, step_), failed, NOW, ENV)
    assert (state, actions) == (failing(AWAITING_REGISTRATION, failed, 3600), [])
    assert step(state, Tick(), after(3599), ENV) == (state, [])
    assert step(state, Tick(), after(3600), ENV) == (replace(state, step=FETCHING), [FetchPolicy()])


@pytest.mark.parametrize("permanent", [False, True])
def test_awaiting_registration_retries_after_registration_retry_on_detection_failure(
    permanent: bool,
) -> None:
    failed = Failed(code="no_user", message="No user found.", permanent=permanent)
    failed_registration_attempt(DETECTING, failed)


@pytest.mark.parametrize("permanent", [False, True])
def test_awaiting_registration_retries_after_registration_retry_on_registration_failure(
    permanent: bool,
) -> None:
    failed = Failed(code="ldap_no_match", message="Not in the directory.", permanent=permanent)
    failed_registration_attempt(REGISTERING, failed)


def test_awaiting_registration_retries_after_registration_retry_on_policy_outage() -> None:
    failed_registration_attempt(FETCHING, DOWN)


def test_awaiting_registration_to_awaiting_policy_when_the_policy_is_gone_for_good() -> None:
    failed = Failed(code="policy_not_found", message="Token rotated.", permanent=True)
    state, actions = step(at(AWAITING_REGISTRATION, FETCHING), failed, NOW, ENV)
    # The failure that sent it back is the first one counted in AWAITING_POLICY.
    expected = failing(AWAITING_POLICY, failed, 300, since=NOW, attempts=1)
    assert (state, actions) == (expected, [])


def test_awaiting_registration_stays_on_manual_policy_and_detects_the_user() -> None:
    state, actions = step(at(AWAITING_REGISTRATION, FETCHING), MANUAL, NOW, ENV)
    expected = at(AWAITING_REGISTRATION, DETECTING, org="acme", registration="manual")
    assert (state, actions) == (expected, [RunDetection()])


def test_awaiting_registration_to_awaiting_sign_in_on_user_detected_under_manual_policy() -> None:
    state = at(AWAITING_REGISTRATION, DETECTING, org="acme", registration="manual")
    state, actions = step(state, DETECTED, NOW, ENV)
    # The detected user is who the sign-in suggests; nothing is retried while waiting for them.
    expected = entered(
        AWAITING_SIGN_IN,
        org="acme",
        registration="manual",
        username="alice@example.com",
        user_home="/home/alice",
        next_attempt_at=None,
    )
    assert (state, actions) == (expected, [])


@pytest.mark.parametrize("permanent", [False, True])
def test_awaiting_registration_retries_after_registration_retry_on_detection_failure_if_manual(
    permanent: bool,
) -> None:
    failed = Failed(code="no_user_detected", message="Nobody logged in.", permanent=permanent)
    state = at(AWAITING_REGISTRATION, DETECTING, registration="manual")
    state, actions = step(state, failed, NOW, ENV)
    expected = failing(AWAITING_REGISTRATION, failed, 3600, registration="manual")
    assert (state, actions) == (expected, [])
    assert step(state, Tick(), after(3600), ENV) == (replace(state, step=FETCHING), [FetchPolicy()])


# AWAITING_SIGN_IN


def waiting_for_sign_in(step_: Step = IDLE, **changes: Any) -> State:
    detected = {"username": "alice@example.com", "user_home": "/home/alice"}
    values = {"org": "acme", "registration": "manual", "next_attempt_at": None, **detected}
    return at(AWAITING_SIGN_IN, step_, **{**values, **changes})


def test_awaiting_sign_in_to_backing_up_on_signed_in() -> None:
    state, actions = step(waiting_for_sign_in(), SIGNED_IN, NOW, ENV)
    # The user signed in under their own name; the detected home is what is backed up.
    expected = entered(
        BACKING_UP,
        org="acme",
        registration="manual",
        username="alice@example.org",
        user_home="/home/alice",
        registered_at="2026-01-01T00:00:00Z",
        next_attempt_at=NOW,
    )
    assert (state, actions) == (expected, [StartBackups()])


def test_awaiting_sign_in_stays_on_restart_without_an_attempt() -> None:
    state = waiting_for_sign_in(DETECTING)
    state, actions = step(state, Started(configured=True), NOW, ENV)
    assert (state, actions) == (waiting_for_sign_in(), [])


def test_awaiting_sign_in_without_a_detected_user_detects_on_restart() -> None:
    # Saved by an agent that entered AWAITING_SIGN_IN without detecting anyone.
    state = waiting_for_sign_in(username=None, user_home=None)
    state, actions = step(state, Started(configured=True), NOW, ENV)
    expected = waiting_for_sign_in(FETCHING, username=None, user_home=None, next_attempt_at=NOW)
    assert (state, actions) == (expected, [FetchPolicy()])


def test_awaiting_sign_in_to_awaiting_registration_on_silent_policy() -> None:
    state, actions = step(waiting_for_sign_in(FETCHING), SILENT, NOW, ENV)
    expected = entered(
        AWAITING_REGISTRATION,
        DETECTING,
        org="acme",
        registration="silent",
        username="alice@example.com",
        user_home="/home/alice",
    )
    assert (state, actions) == (expected, [RunDetection()])


def test_awaiting_sign_in_stays_on_manual_policy_and_detects_again() -> None:
    state, actions = step(waiting_for_sign_in(FETCHING), MANUAL, NOW, ENV)
    assert (state, actions) == (waiting_for_sign_in(DETECTING), [RunDetection()])
    bob = UserDetected(username="bob@example.com", user_home="/home/bob")
    state, actions = step(state, bob, NOW, ENV)
    # Still waiting, for the newly detected user, and not failing.
    expected = waiting_for_sign_in(
        username="bob@example.com",
        user_home="/home/bob",
        attempts=0,
        last_error=None,
        last_error_code=None,
    )
    assert (state, actions) == (expected, [])


def test_awaiting_sign_in_retries_after_registration_retry_on_detection_failure() -> None:
    failed = Failed(code="no_user_detected", message="Nobody logged in.")
    state, actions = step(waiting_for_sign_in(DETECTING), failed, NOW, ENV)
    waiting = waiting_for_sign_in()
    expected = failing(
        AWAITING_SIGN_IN,
        failed,
        3600,
        org=waiting.org,
        registration=waiting.registration,
        username=waiting.username,
        user_home=waiting.user_home,
    )
    assert (state, actions) == (expected, [])
    assert step(state, Tick(), after(3600), ENV) == (replace(state, step=FETCHING), [FetchPolicy()])


# BACKING_UP


def test_backing_up_checks_in_then_backs_up_every_backup_interval() -> None:
    state, actions = step(at(BACKING_UP), Tick(), NOW, ENV)
    assert (state, actions) == (at(BACKING_UP, CHECKING_IN), [FetchPolicy(as_device=True)])
    state, actions = step(state, CheckedIn(org="acme-renamed"), NOW, ENV)
    assert (state.step, state.org, actions) == (Step.BACKING, "acme-renamed", [RunBackup()])
    done = BackupDone(snapshot_id="s1", finished_at="2026-01-01T00:01:00+00:00", files=3, bytes=9)
    state, actions = step(state, done, NOW, ENV)
    expected = entered(
        BACKING_UP,
        since=EARLIER,
        org="acme-renamed",
        next_attempt_at=after(900),
        last_backup={
            "snapshot_id": "s1",
            "finished_at": "2026-01-01T00:01:00+00:00",
            "files": 3,
            "bytes": 9,
        },
    )
    assert (state, actions) == (expected, [])


def test_a_failed_backup_is_retried_after_backup_interval_without_a_snapshot() -> None:
    state, actions = step(at(BACKING_UP, Step.BACKING), DOWN, NOW, ENV)
    assert (state, actions) == (failing(BACKING_UP, DOWN, 900), [])
    assert state.last_backup is None


def test_backup_requested_starts_an_attempt_at_once_only_when_idle_in_backing_up() -> None:
    state, actions = step(at(BACKING_UP, next_attempt_at=after(900)), BackupRequested(), NOW, ENV)
    assert (state.step, actions) == (CHECKING_IN, [FetchPolicy(as_device=True)])
    busy = at(BACKING_UP, Step.BACKING)
    assert step(busy, BackupRequested(), NOW, ENV) == (busy, [])
    waiting = at(AWAITING_POLICY)
    assert step(waiting, BackupRequested(), NOW, ENV) == (waiting, [])


def test_backing_up_stays_on_check_in_failure_and_retries_after_backup_interval() -> None:
    state, actions = step(at(BACKING_UP, CHECKING_IN), DOWN, NOW, ENV)
    assert (state, actions) == (failing(BACKING_UP, DOWN, 900), [])


def test_backing_up_to_awaiting_registration_on_credential_rejected() -> None:
    state = at(BACKING_UP, CHECKING_IN, registered_at="2025-12-01T00:00:00Z")
    state, actions = step(state, CredentialRejected(message="Unknown device."), NOW, ENV)
    assert (state.phase, state.since, state.attempts) == (AWAITING_REGISTRATION, NOW, 0)
    assert (state.registered_at, state.next_attempt_at) == (None, NOW)
    # The token, not the rejected device credential, fetches the policy.
    assert (state.step, actions) == (FETCHING, [FetchPolicy()])


def test_backing_up_to_awaiting_registration_on_credential_rejected_starts_with_no_error() -> None:
    state, _ = step(at(BACKING_UP), CredentialRejected(message="Unknown device."), NOW, ENV)
    assert state.phase == AWAITING_REGISTRATION
    assert (state.last_error, state.last_error_code) == (None, None)


# STOPPED, and restarts


@pytest.mark.parametrize("step_", list(Step))
@pytest.mark.parametrize("phase", NOT_STOPPED)
def test_any_phase_to_stopped_on_stop(phase: Phase, step_: Step) -> None:
    state, actions = step(at(phase, step_), StopRequested(by="alice"), NOW, ENV)
    expected = at(STOPPED, since=NOW, resume_phase=phase, stopped_by="alice", next_attempt_at=None)
    assert (state, actions) == (expected, [])


def stopped(resume: Phase) -> State:
    return at(STOPPED, resume_phase=resume, stopped_by="alice", next_attempt_at=None)


def test_stopped_stays_on_stop() -> None:
    state = stopped(BACKING_UP)
    assert step(state, StopRequested(by="bob"), NOW, ENV) == (state, [])


@pytest.mark.parametrize("phase", CONFIGURED)
def test_stopped_to_previous_phase_on_start_with_a_fresh_attempt(phase: Phase) -> None:
    state, actions = step(stopped(phase), StartRequested(by="alice"), NOW, ENV)
    assert (state.phase, state.since, state.step) == (phase, NOW, FETCHING)
    assert state.next_attempt_at == NOW
    assert (state.resume_phase, state.stopped_by, actions) == (None, None, [FetchPolicy()])


@pytest.mark.parametrize("phase", CONFIGURED)
def test_stopped_to_previous_phase_on_start_counts_failures_afresh(phase: Phase) -> None:
    # `since` ("time the phase began") restarts, so `attempts` ("in this phase") must too.
    state, _ = step(stopped(phase), StartRequested(by="alice"), NOW, ENV)
    assert (state.since, state.attempts) == (NOW, 0)
    assert (state.last_error, state.last_error_code) == (None, None)


def test_stopped_to_backing_up_on_start_restarts_backups_and_checks_in() -> None:
    state, actions = step(stopped(BACKING_UP), StartRequested(by="alice"), NOW, ENV)
    assert (state.phase, state.step) == (BACKING_UP, CHECKING_IN)
    assert actions == [StartBackups(), FetchPolicy(as_device=True)]


def test_stopped_to_unconfigured_on_start_waits_for_args() -> None:
    state, actions = step(stopped(UNCONFIGURED), StartRequested(by="alice"), NOW, ENV)
    assert (state.phase, state.next_attempt_at, actions) == (UNCONFIGURED, None, [])


@pytest.mark.parametrize("configured", [False, True])
def test_stopped_stays_stopped_on_restart(configured: bool) -> None:
    state = stopped(BACKING_UP)
    assert step(state, Started(configured=configured), NOW, ENV) == (state, [])


@pytest.mark.parametrize("interrupted", list(Step))
@pytest.mark.parametrize("phase", [AWAITING_POLICY, AWAITING_REGISTRATION])
def test_restart_resumes_the_phase_with_an_attempt_due_at_once(
    phase: Phase, interrupted: Step
) -> None:
    state = at(phase, interrupted, next_attempt_at=after(3000))
    state, actions = step(state, Started(configured=True), NOW, ENV)
    assert (state, actions) == (at(phase, FETCHING, next_attempt_at=NOW), [FetchPolicy()])


def test_restart_in_backing_up_restarts_backups_and_checks_in_at_once() -> None:
    state, actions = step(at(BACKING_UP, next_attempt_at=after(600)), Started(True), NOW, ENV)
    checking_in = [StartBackups(), FetchPolicy(as_device=True)]
    assert (state, actions) == (at(BACKING_UP, CHECKING_IN), checking_in)


# Tick


@pytest.mark.parametrize("phase", [*CONFIGURED, BACKING_UP])
def test_tick_before_next_attempt_at_changes_nothing(phase: Phase) -> None:
    state = at(phase, next_attempt_at=after(1))
    assert step(state, Tick(), NOW, ENV) == (state, [])


@pytest.mark.parametrize("late", [0, 1, 86400])
@pytest.mark.parametrize("phase", CONFIGURED)
def test_tick_at_or_after_next_attempt_at_starts_the_attempt(phase: Phase, late: int) -> None:
    state, actions = step(at(phase, next_attempt_at=NOW), Tick(), after(late), ENV)
    assert (state.phase, state.step, actions) == (phase, FETCHING, [FetchPolicy()])


@pytest.mark.parametrize("step_", IN_FLIGHT)
@pytest.mark.parametrize("phase", [*CONFIGURED, BACKING_UP])
def test_tick_during_an_attempt_changes_nothing(phase: Phase, step_: Step) -> None:
    state = at(phase, step_, next_attempt_at=EARLIER)
    assert step(state, Tick(), NOW, ENV) == (state, [])


@pytest.mark.parametrize("phase", [STOPPED, UNCONFIGURED])
def test_tick_in_stopped_or_unconfigured_changes_nothing(phase: Phase) -> None:
    state = at(phase, next_attempt_at=EARLIER, resume_phase=AWAITING_POLICY)
    assert step(state, Tick(), NOW, ENV) == (state, [])


def test_tick_without_a_scheduled_attempt_changes_nothing() -> None:
    state = at(AWAITING_SIGN_IN, next_attempt_at=None)
    assert step(state, Tick(), NOW, ENV) == (state, [])


# Retry-After and jitter


def test_retry_after_longer_than_the_interval_sets_the_wait() -> None:
    env = Env(timings=Timings(policy_retry=300.0, jitter=0.0), draw=0.999)
    failed = Failed(code="rate_limited", message="Slow down.", retry_after=7200.0)
    state, _ = step(at(AWAITING_POLICY, FETCHING), failed, NOW, env)
    assert state.next_attempt_at == after(7200)


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999])
def test_retry_after_is_spread_above_its_bound_by_the_jitter(draw: float) -> None:
    env = Env(timings=Timings(policy_retry=300.0, jitter=0.1), draw=draw)
    failed = Failed(code="overloaded", message="Busy.", retry_after=7200.0)
    state, _ = step(at(AWAITING_POLICY, FETCHING), failed, NOW, env)
    assert state.next_attempt_at is not None
    assert after(7200) <= state.next_attempt_at <= after(7920)


def test_devices_told_the_same_retry_after_come_back_at_different_seconds() -> None:
    moments = set()
    for n in range(20):
        env = Env(timings=Timings(jitter=0.1), draw=0.5, device_phase=device_phase(f"guid-{n}"))
        failed = Failed(code="overloaded", message="Busy.", retry_after=600.0)
        state, _ = step(at(AWAITING_POLICY, FETCHING), failed, NOW, env)
        assert state.next_attempt_at is not None
        moments.add(int(state.next_attempt_at.timestamp()))
    assert len(moments) > 10


@pytest.mark.parametrize("retry_after", [0.0, 10.0, 299.0])
def test_retry_after_shorter_than_the_interval_does_not_shorten_it(retry_after: float) -> None:
    failed = Failed(code="rate_limited", message="Slow down.", retry_after=retry_after)
    state, _ = step(at(AWAITING_REGISTRATION, DETECTING), failed, NOW, ENV)
    assert state.next_attempt_at == after(3600)


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.75, 0.999])
def test_jitter_keeps_the_wait_within_ten_percent(draw: float) -> None:
    env = Env(timings=Timings(policy_retry=300.0, jitter=0.1), draw=draw)
    assert 270.0 <= jittered(300.0, env) <= 330.0
    failed = Failed(code="unreachable", message="Down.")
    state, _ = step(at(AWAITING_POLICY, FETCHING), failed, NOW, env)
    assert state.next_attempt_at is not None
    assert after(270) <= state.next_attempt_at <= after(330)


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999])
def test_zero_jitter_waits_exactly_the_base(draw: float) -> None:
    assert jittered(3600.0, Env(timings=TIMINGS, draw=draw, device_phase=0.7)) == 3600.0


def test_devices_with_the_same_draw_spread_their_waits() -> None:
    phases = [device_phase(f"0b7e4b56-4f0e-4d7c-9a55-{n:012d}") for n in range(20)]
    timings = Timings(jitter=0.1)
    waits = {int(jittered(3600.0, Env(timings=timings, draw=0.5, device_phase=p))) for p in phases}
    assert len(waits) > 10
    assert all(3240 <= w <= 3960 for w in waits)


def test_device_phase_is_fixed_per_device_and_within_the_unit_interval() -> None:
    guid = "0b7e4b56-4f0e-4d7c-9a55-2c1d3e4f5a6b"
    assert device_phase(guid) == device_phase(guid)
    assert 0.0 <= device_phase(guid) < 1.0
    assert device_phase(guid) != device_phase(guid.upper())


def test_the_wait_is_never_under_a_second() -> None:
    assert jittered(1.5, Env(timings=Timings(jitter=0.5), draw=0.0)) == 1.0


def test_a_sub_second_base_from_agent_yaml_is_waited_never_shortened_by_the_jitter() -> None:
    # agent.yaml may set policy_retry_seconds to 0.1 (soak runs): 0.1 s, not a second.
    assert jittered(0.1, Env(timings=Timings(jitter=0.5), draw=0.0)) == 0.1
    env = Env(timings=Timings(jitter=0.5), draw=0.99, device_phase=0.99)
    assert jittered(0.1, env) == pytest.approx(0.1 * (1 + 0.5 * 0.98))


def test_a_fleet_failing_together_drifts_apart_with_every_retry() -> None:
    # Each device retries mostly at its own rate, so a fleet that failed at the same moment
    # spreads linearly with the retries; fresh draws alone would spread it as a random walk
    # (by sqrt(6) = 2.4 after six retries, where the devices' own rates give about six).
    draws = random.Random(7)
    timings = Timings(policy_retry=300.0, jitter=0.1)
    guids = [f"0b7e4b56-4f0e-4d7c-9a55-{n:012d}" for n in range(2000)]
    elapsed = dict.fromkeys(guids, 0.0)
    spread = []
    for _ in range(6):
        for guid in guids:
            env = Env(timings=timings, draw=draws.random(), device_phase=device_phase(guid))
            elapsed[guid] += jittered(300.0, env)
        spread.append(statistics.pstdev(elapsed.values()))
    assert spread[5] > 5.0 * spread[0]


UNIT = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(draw=UNIT, phase=UNIT, base=st.floats(10.0, 100000.0), jitter=st.floats(0.0, 0.5))
def test_jittered_wait_stays_within_the_jitter_bounds(
    draw: float, phase: float, base: float, jitter: float
) -> None:
    wait = jittered(base, Env(timings=Timings(jitter=jitter), draw=draw, device_phase=phase))
    assert wait >= 1.0
    assert base * (1.0 - jitter) - 1e-6 <= wait <= base * (1.0 + jitter) + 1e-6


# Late and out-of-place events


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (at(AWAITING_REGISTRATION, DETECTING), REGISTERED),
        (at(AWAITING_REGISTRATION), REGISTERED),
        (at(AWAITING_REGISTRATION, REGISTERING), SIGNED_IN),
        (stopped(AWAITING_SIGN_IN), SIGNED_IN),
        (waiting_for_sign_in(), REGISTERED),
        (waiting_for_sign_in(), DETECTED),
        (at(AWAITING_POLICY), SILENT),
        (at(AWAITING_REGISTRATION, REGISTERING), SILENT),
        (at(AWAITING_POLICY), DOWN),
        (at(BACKING_UP), DOWN),
        (at(AWAITING_REGISTRATION, FETCHING), DETECTED),
        (at(BACKING_UP), CheckedIn(org="acme")),
        (at(AWAITING_REGISTRATION, FETCHING), CheckedIn(org="acme")),
        (stopped(AWAITING_REGISTRATION), REGISTERED),
        (stopped(AWAITING_REGISTRATION), DETECTED),
        (stopped(AWAITING_POLICY), SILENT),
        (stopped(BACKING_UP), DOWN),
    ],
)
def test_late_or_out_of_place_event_changes_nothing(state: State, event: Event) -> None:
    assert step(state, event, NOW, ENV) == (state, [])


OUT_OF_PHASE = [
    *[(Configured(), p) for p in Phase if p != UNCONFIGURED],
    *[(CredentialRejected(message="Unknown device."), p) for p in Phase if p != BACKING_UP],
    *[(StartRequested(by="alice"), p) for p in NOT_STOPPED],
    *[(SIGNED_IN, p) for p in Phase if p != AWAITING_SIGN_IN],
]


@pytest.mark.parametrize(("event", "phase"), OUT_OF_PHASE, ids=str)
def test_event_outside_the_phase_it_belongs_to_changes_nothing(event: Event, phase: Phase) -> None:
    state = at(phase, DETECTING, resume_phase=AWAITING_POLICY if phase == STOPPED else None)
    assert step(state, event, NOW, ENV) == (state, [])


def test_unknown_event_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown event"):
        step(State(), "start", NOW, ENV)  # type: ignore[arg-type]


# Purity, and every event in every phase and step

EVERY_EVENT: list[Event] = [
    Started(configured=True),
    Configured(),
    Tick(),
    SILENT,
    MANUAL,
    Failed(code="unreachable", message="Down.", permanent=True, retry_after=30.0),
    DETECTED,
    REGISTERED,
    SIGNED_IN,
    CheckedIn(org="acme"),
    CredentialRejected(message="Unknown device."),
    StopRequested(by="alice"),
    StartRequested(by="alice"),
]


@pytest.mark.parametrize("event", EVERY_EVENT, ids=repr)
def test_step_is_pure(event: Event) -> None:
    state = at(AWAITING_REGISTRATION, REGISTERING, facts={"os": {"name": "linux"}})
    before = copy.deepcopy(state)
    env = Env(timings=Timings(jitter=0.1), draw=0.3, device_phase=0.6)
    assert step(state, event, NOW, env) == step(state, event, NOW, env)
    assert state == before


@pytest.mark.parametrize("event", EVERY_EVENT, ids=repr)
@pytest.mark.parametrize("step_", list(Step))
@pytest.mark.parametrize("phase", list(Phase))
def test_every_event_in_every_phase_and_step_gives_a_state_and_actions(
    phase: Phase, step_: Step, event: Event
) -> None:
    resume = AWAITING_REGISTRATION if phase == STOPPED else None
    state = at(phase, step_, next_attempt_at=NOW - dt.timedelta(minutes=1), resume_phase=resume)
    result, actions = step(state, event, NOW, Env(timings=Timings(), draw=0.9))
    assert isinstance(result, State)
    assert isinstance(result.phase, Phase)
    assert isinstance(result.step, Step)
    assert isinstance(actions, list)
    assert all(isinstance(action, Action) for action in actions)
