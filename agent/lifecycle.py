"""The agent's deployment lifecycle as a pure state machine.

    step(state, event, now, env) -> (state, actions)

No I/O, no clock, no randomness of its own: the time comes in as `now`, the random draw as
`env.draw`, the intervals as `env.timings`. The daemon performs the actions and feeds their
outcomes back as events.

    UNCONFIGURED ──args──▶ AWAITING_POLICY ──found──▶ AWAITING_REGISTRATION ──ok──▶ BACKING_UP
                            ▲  │ every policy_retry     │ every registration_retry:
                            │  ▼                        │ fetch policy, detect, register
                            └── policy gone for good ◀──┘
                                   user detected, manual policy
                                        ▼
                                   AWAITING_SIGN_IN ──signed in──▶ BACKING_UP
    any phase ──stop──▶ STOPPED ──start──▶ the phase it was stopped in, a fresh attempt at once

An attempt in AWAITING_REGISTRATION is three actions in a row: FetchPolicy, RunDetection,
Register. Any failure ends the attempt and schedules the next one. Under a manual policy the
attempt stops after detection: the detected user is who the sign-in prompt suggests, and their
home is what will be backed up; AWAITING_SIGN_IN then waits, with no attempt scheduled, for a
user to sign in (`holdfast login`), which the daemon reports as SignedIn.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from agent.lifecycle_model import (
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
)


def device_phase(device_guid: str) -> float:
    """A fixed offset in [0, 1) per device, so devices with the same random draws still spread."""
    digest = hashlib.sha256(device_guid.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# How much of each wait's jitter is the device's own, fixed by its GUID, rather than a fresh
# draw. A fleet that started together (a mass install, an authority that came back) drifts
# apart by its devices' different rates: linearly with each retry, where fresh draws alone
# spread it only as a random walk (a 30-minute outage: busiest second 3.4x the mean at
# jitter 0.1, against 1.6x; benchmarks/fleet_storm.py). The fresh part keeps two devices
# that share a GUID (a cloned image) from moving in lockstep.
OWN_RATE = 0.8


def jitter_unit(env: Env) -> float:
    """Where in [0, 1) this wait falls within the jitter: mostly the device's, partly fresh."""
    return OWN_RATE * env.device_phase + (1.0 - OWN_RATE) * env.draw


def jittered(base: float, env: Env) -> float:
    """`base` moved by up to +/- jitter, mostly by the device's own rate (`jitter_unit`)."""
    unit = jitter_unit(env)
    # Never under a second, or under a sub-second base (agent.yaml only, for soak runs).
    return max(min(1.0, base), base * (1.0 + env.timings.jitter * (2.0 * unit - 1.0)))


def _after(now: dt.datetime, base: float, env: Env, retry_after: float | None) -> dt.datetime:
    wait = jittered(base, env)
    if retry_after is not None and retry_after > wait:
        # Retry-After is a lower bound, never shortened; spread above it, or every device
        # told the same Retry-After would come back in the same second.
        wait = retry_after * (1.0 + env.timings.jitter * jitter_unit(env))
    return now + dt.timedelta(seconds=wait)


def _enter(state: State, phase: Phase, now: dt.datetime, **changes: Any) -> State:
    """A new phase: its clock and failure count start over, its first attempt is due now."""
    values: dict[str, Any] = {
        "phase": phase,
        "since": now,
        "attempts": 0,
        "last_error": None,
        "last_error_code": None,
        "next_attempt_at": now,
        "step": Step.IDLE,
    }
    return replace(state, **{**values, **changes})


def _retry_interval(state: State, env: Env) -> float:
    if state.phase == Phase.AWAITING_POLICY:
        return env.timings.policy_retry
    if state.phase == Phase.BACKING_UP:
        return env.timings.backup_interval
    return env.timings.registration_retry


def _failed(state: State, event: Failed, now: dt.datetime, env: Env) -> State:
    # AWAITING_REGISTRATION -> AWAITING_POLICY when the policy is gone for good (token
    # rotated, policy deleted, organization deactivated): the policy is "not found" again.
    if (
        state.phase == Phase.AWAITING_REGISTRATION
        and state.step == Step.FETCHING_POLICY
        and event.permanent
    ):
        state = _enter(state, Phase.AWAITING_POLICY, now)
    return replace(
        state,
        step=Step.IDLE,
        attempts=state.attempts + 1,
        last_error=event.message,
        last_error_code=event.code,
        next_attempt_at=_after(now, _retry_interval(state, env), env, event.retry_after),
    )


def _due(state: State, now: dt.datetime) -> bool:
    return (
        state.step == Step.IDLE
        and state.next_attempt_at is not None
        and now >= state.next_attempt_at
    )


def _attempt(state: State) -> tuple[State, list[Action]]:
    if state.phase in (Phase.AWAITING_POLICY, Phase.AWAITING_REGISTRATION, Phase.AWAITING_SIGN_IN):
        return replace(state, step=Step.FETCHING_POLICY), [FetchPolicy()]
    if state.phase == Phase.BACKING_UP:
        return replace(state, step=Step.CHECKING_IN), [FetchPolicy(as_device=True)]
    return state, []


Result = tuple[State, list[Action]]


def _on_started(state: State, event: Started, now: dt.datetime, env: Env) -> Result:
    if state.phase == Phase.STOPPED or (
        state.phase == Phase.AWAITING_SIGN_IN and state.user_home is not None
    ):
        # Nothing to retry: a stop lasts until `start`, and a sign-in waits for the user, whose
        # detected name and home are already in the state (a reboot does not ask again). A
        # state saved in AWAITING_SIGN_IN before detection (an older agent) detects first.
        return replace(state, step=Step.IDLE, next_attempt_at=None), []
    if state.phase == Phase.UNCONFIGURED:
        if not event.configured:
            return replace(state, since=state.since or now, next_attempt_at=None), []
        # UNCONFIGURED -> AWAITING_POLICY
        return _attempt(_enter(state, Phase.AWAITING_POLICY, now))
    # A restart resumes the phase it was in, with a fresh attempt at once; an attempt
    # interrupted by the restart simply did not happen.
    resumed, actions = _attempt(replace(state, step=Step.IDLE, next_attempt_at=now))
    if resumed.phase == Phase.BACKING_UP:
        return resumed, [StartBackups(), *actions]
    return resumed, actions


def _on_configured(state: State, event: Configured, now: dt.datetime, env: Env) -> Result:
    if state.phase != Phase.UNCONFIGURED:
        return state, []
    # UNCONFIGURED -> AWAITING_POLICY
    return _attempt(_enter(state, Phase.AWAITING_POLICY, now))


def _on_tick(state: State, event: Tick, now: dt.datetime, env: Env) -> Result:
    if state.phase in (Phase.STOPPED, Phase.UNCONFIGURED) or not _due(state, now):
        return state, []
    return _attempt(state)


def _on_policy_found(state: State, event: PolicyFound, now: dt.datetime, env: Env) -> Result:
    if state.step != Step.FETCHING_POLICY:
        return state, []
    found = replace(state, org=event.org, registration=event.registration)
    if state.phase == Phase.AWAITING_POLICY:
        # AWAITING_POLICY -> AWAITING_REGISTRATION, detection at once; a manual policy too,
        # since the detected user is who the sign-in is for
        found = _enter(found, Phase.AWAITING_REGISTRATION, now)
    elif state.phase == Phase.AWAITING_SIGN_IN and event.registration != "manual":
        # AWAITING_SIGN_IN -> AWAITING_REGISTRATION: the policy became silent
        found = _enter(found, Phase.AWAITING_REGISTRATION, now)
    return replace(found, step=Step.DETECTING), [RunDetection()]


def _on_user_detected(state: State, event: UserDetected, now: dt.datetime, env: Env) -> Result:
    if state.step != Step.DETECTING:
        return state, []
    if state.registration != "manual":
        return replace(state, step=Step.REGISTERING), [Register(event.username, event.user_home)]
    detected = replace(state, username=event.username, user_home=event.user_home)
    if state.phase == Phase.AWAITING_SIGN_IN:
        # Detected again (a start after a stop): still waiting for the user, not failing.
        waiting = replace(detected, attempts=0, last_error=None, last_error_code=None)
        return replace(waiting, step=Step.IDLE, next_attempt_at=None), []
    # AWAITING_REGISTRATION -> AWAITING_SIGN_IN: nothing is retried while the user is awaited
    return _enter(detected, Phase.AWAITING_SIGN_IN, now, next_attempt_at=None), []


def _into_backing_up(
    state: State, event: Registered | SignedIn, now: dt.datetime, env: Env
) -> Result:
    entered = _enter(
        state,
        Phase.BACKING_UP,
        now,
        username=event.username,
        user_home=event.user_home,
        registered_at=event.registered_at,
    )
    # The first full backup right after registration: its attempt is due now.
    return entered, [StartBackups()]


def _on_registered(state: State, event: Registered, now: dt.datetime, env: Env) -> Result:
    if state.step != Step.REGISTERING:
        return state, []
    # AWAITING_REGISTRATION -> BACKING_UP
    return _into_backing_up(state, event, now, env)


def _on_signed_in(state: State, event: SignedIn, now: dt.datetime, env: Env) -> Result:
    if state.phase != Phase.AWAITING_SIGN_IN:
        return state, []
    # AWAITING_SIGN_IN -> BACKING_UP
    return _into_backing_up(state, event, now, env)


def _on_checked_in(state: State, event: CheckedIn, now: dt.datetime, env: Env) -> Result:
    if state.step != Step.CHECKING_IN:
        return state, []
    # Checked in (policy refreshed, phase reported): now the backup itself.
    return replace(state, org=event.org, step=Step.BACKING), [RunBackup()]


def _on_backup_done(state: State, event: BackupDone, now: dt.datetime, env: Env) -> Result:
    if state.step != Step.BACKING:
        return state, []
    done = replace(
        state,
        step=Step.IDLE,
        attempts=0,
        last_error=None,
        last_error_code=None,
        last_backup={
            "snapshot_id": event.snapshot_id,
            "finished_at": event.finished_at,
            "files": event.files,
            "bytes": event.bytes,
        },
        next_attempt_at=_after(now, env.timings.backup_interval, env, None),
    )
    return done, []


def _on_backup_requested(
    state: State, event: BackupRequested, now: dt.datetime, env: Env
) -> Result:
    if state.phase != Phase.BACKING_UP or state.step != Step.IDLE:
        return state, []  # not registered yet, stopped, or a backup already running
    return _attempt(replace(state, next_attempt_at=now))


def _on_credential_rejected(
    state: State, event: CredentialRejected, now: dt.datetime, env: Env
) -> Result:
    if state.phase != Phase.BACKING_UP:
        return state, []
    # BACKING_UP -> AWAITING_REGISTRATION: the authority no longer knows this credential
    # (the daemon logs why; last_error stays null until an attempt of the new phase fails)
    return _attempt(_enter(state, Phase.AWAITING_REGISTRATION, now, registered_at=None))


def _on_failed(state: State, event: Failed, now: dt.datetime, env: Env) -> Result:
    if state.step == Step.IDLE:
        return state, []
    return _failed(state, event, now, env), []


def _on_stop(state: State, event: StopRequested, now: dt.datetime, env: Env) -> Result:
    if state.phase == Phase.STOPPED:
        return state, []
    # any phase -> STOPPED
    stopped = replace(
        state,
        phase=Phase.STOPPED,
        since=now,
        resume_phase=state.phase,
        stopped_by=event.by,
        step=Step.IDLE,
        next_attempt_at=None,
    )
    return stopped, []


def _on_start(state: State, event: StartRequested, now: dt.datetime, env: Env) -> Result:
    if state.phase != Phase.STOPPED:
        return state, []
    # STOPPED -> the phase it was stopped in, a fresh attempt at once; failures from
    # before the stop are not counted again.
    resumed = _enter(
        state, state.resume_phase or Phase.UNCONFIGURED, now, resume_phase=None, stopped_by=None
    )
    if resumed.phase == Phase.UNCONFIGURED:
        return replace(resumed, next_attempt_at=None), []
    if resumed.phase == Phase.BACKING_UP:
        checked, actions = _attempt(resumed)
        return checked, [StartBackups(), *actions]
    return _attempt(resumed)


_HANDLERS: dict[type, Callable[[State, Any, dt.datetime, Env], Result]] = {
    Started: _on_started,
    Configured: _on_configured,
    Tick: _on_tick,
    PolicyFound: _on_policy_found,
    UserDetected: _on_user_detected,
    Registered: _on_registered,
    SignedIn: _on_signed_in,
    CheckedIn: _on_checked_in,
    CredentialRejected: _on_credential_rejected,
    Failed: _on_failed,
    StopRequested: _on_stop,
    StartRequested: _on_start,
    BackupDone: _on_backup_done,
    BackupRequested: _on_backup_requested,
}


def step(state: State, event: Event, now: dt.datetime, env: Env) -> Result:
    """The next state and the actions it asks for. Pure: same inputs, same outputs.

    An event that does not fit the state (a late outcome of an attempt that a stop
    interrupted, say) changes nothing.
    """
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise TypeError(f"unknown event {event!r}")
    return handler(state, event, now, env)


__all__ = [
    "Action",
    "BackupDone",
    "BackupRequested",
    "CheckedIn",
    "Configured",
    "CredentialRejected",
    "Env",
    "Event",
    "Failed",
    "FetchPolicy",
    "Phase",
    "PolicyFound",
    "Register",
    "Registered",
    "RunBackup",
    "RunDetection",
    "SignedIn",
    "StartBackups",
    "StartRequested",
    "Started",
    "State",
    "Step",
    "StopRequested",
    "Tick",
    "Timings",
    "UserDetected",
    "device_phase",
    "jitter_unit",
    "jittered",
    "step",
]
