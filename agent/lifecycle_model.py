"""The lifecycle's vocabulary: phases, the persisted State, the events and the actions.

agent.lifecycle decides (`step`); this module only names things, so the daemon, the status
and the tests can speak about a state without the rules.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    UNCONFIGURED = "unconfigured"
    AWAITING_POLICY = "awaiting_policy"
    AWAITING_REGISTRATION = "awaiting_registration"
    AWAITING_SIGN_IN = "awaiting_sign_in"
    BACKING_UP = "backing_up"
    STOPPED = "stopped"


class Step(StrEnum):
    """Where the current attempt is; IDLE between attempts."""

    IDLE = "idle"
    FETCHING_POLICY = "fetching_policy"
    DETECTING = "detecting"
    REGISTERING = "registering"
    CHECKING_IN = "checking_in"
    BACKING = "backing"


@dataclass(frozen=True)
class Timings:
    policy_retry: float = 300.0
    registration_retry: float = 3600.0
    backup_interval: float = 900.0
    jitter: float = 0.1  # +/- fraction applied to every wait


@dataclass(frozen=True)
class Env:
    timings: Timings
    draw: float = 0.5  # a fresh uniform draw in [0, 1) from the daemon's random source
    device_phase: float = 0.0  # in [0, 1), fixed per device (see device_phase())


@dataclass(frozen=True)
class State:
    phase: Phase = Phase.UNCONFIGURED
    since: dt.datetime | None = None
    next_attempt_at: dt.datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    last_error_code: str | None = None
    step: Step = Step.IDLE
    resume_phase: Phase | None = None  # while STOPPED: where `start` goes back to
    stopped_by: str | None = None
    org: str | None = None
    registration: str | None = None  # "silent" or "manual", from the latest policy
    username: str | None = None
    user_home: str | None = None
    registered_at: str | None = None
    last_backup: dict[str, Any] | None = None  # {snapshot_id, finished_at, files, bytes}
    facts: dict[str, Any] = field(default_factory=dict)


# Events: what happened.


@dataclass(frozen=True)
class Started:
    configured: bool  # installer arguments are present


@dataclass(frozen=True)
class Configured:
    """Installer arguments arrived while the agent was unconfigured."""


@dataclass(frozen=True)
class Tick:
    """The daemon woke up; an attempt is due if `now` has reached `next_attempt_at`."""


@dataclass(frozen=True)
class PolicyFound:
    org: str
    registration: str  # "silent" or "manual"


@dataclass(frozen=True)
class Failed:
    """The current attempt failed; `permanent` when the authority refused it for good."""

    code: str
    message: str
    permanent: bool = False
    retry_after: float | None = None


@dataclass(frozen=True)
class UserDetected:
    username: str
    user_home: str


@dataclass(frozen=True)
class Registered:
    username: str
    user_home: str
    registered_at: str


@dataclass(frozen=True)
class SignedIn:
    """A user signed in (manual registration) and the authority registered the device."""

    username: str
    user_home: str
    registered_at: str


@dataclass(frozen=True)
class CheckedIn:
    org: str


@dataclass(frozen=True)
class CredentialRejected:
    """A registered device's credential no longer works: register again."""

    message: str


@dataclass(frozen=True)
class StopRequested:
    by: str


@dataclass(frozen=True)
class StartRequested:
    by: str


@dataclass(frozen=True)
class BackupDone:
    """A snapshot was committed."""

    snapshot_id: str
    finished_at: str
    files: int
    bytes: int


@dataclass(frozen=True)
class BackupRequested:
    """A user asked for a backup now (`holdfast backup-now`, the tray)."""


Event = (
    Started
    | Configured
    | Tick
    | PolicyFound
    | Failed
    | UserDetected
    | Registered
    | SignedIn
    | CheckedIn
    | CredentialRejected
    | StopRequested
    | StartRequested
    | BackupDone
    | BackupRequested
)


# Actions: what the daemon must do next.


@dataclass(frozen=True)
class FetchPolicy:
    as_device: bool = False  # with the device credential (registered) instead of the token


@dataclass(frozen=True)
class RunDetection:
    pass


@dataclass(frozen=True)
class Register:
    username: str
    user_home: str


@dataclass(frozen=True)
class StartBackups:
    """Registered: backups begin (the first one at once)."""


@dataclass(frozen=True)
class RunBackup:
    pass


Action = FetchPolicy | RunDetection | Register | StartBackups | RunBackup


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
]
