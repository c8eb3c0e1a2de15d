"""One simulated device: the agent's own lifecycle (`agent.lifecycle.step`) and transport
(`agent.transport.AuthorityClient`), with the daemon's I/O replaced by what a fleet
simulation can afford.

What is real: every request, made by AuthorityClient over pinned TLS; the policy parsed by
`agent.policy.Policy`; registration by `agent.registration.register` (the credential saved
as the agent saves it); the waits, decided by `step` with the policy's timings, the
per-device phase and Retry-After; on-the-spot retries of backup requests by the engine's
`Retrier`. What is simulated: the detection script's answer (each device has its own user
and home), and the first backup, which is one small file: its blob and the manifest sealed
with the agent's blob code and sent in one pack (the engine escrows the key first and sends
the manifest in a pack of its own: two and one requests more).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from agent import __version__
from agent.backup import manifest
from agent.backup.blobs import chunk_id, seal_parts
from agent.backup.keys import Subkeys
from agent.backup.packer import Packer
from agent.backup.retry import Retrier
from agent.config import AgentConfig
from agent.daemon import failure_of
from agent.errors import ContactError, PermanentError, TransientError
from agent.identity import Identity
from agent.lifecycle import (
    Action,
    BackupDone,
    CheckedIn,
    CredentialRejected,
    Env,
    Event,
    FetchPolicy,
    PolicyFound,
    Register,
    Registered,
    RunBackup,
    RunDetection,
    Started,
    State,
    Tick,
    UserDetected,
    device_phase,
    step,
)
from agent.policy import Policy
from agent.registration import register
from agent.transport import AuthorityClient

T = TypeVar("T")
# Requests in the order a device makes them; the table lists them so.
KINDS = (
    "deploy/policy",
    "deploy/register",
    "device/policy",
    "chunks/missing",
    "packs",
    "snapshots",
)


class Clock(Protocol):
    """The simulation's time, injected into everything that waits or asks for `now`."""

    def now(self) -> dt.datetime: ...

    def sleep(self, seconds: float) -> None: ...


def is_overload(exc: ContactError) -> bool:
    """An answer a busy server gives and an agent waits out: 503 or 429 with Retry-After.

    `internal_error` carries a Retry-After too, but it is a bug, not load: an error.
    """
    return (
        isinstance(exc, TransientError)
        and exc.retry_after is not None
        and exc.code != "internal_error"
    )


@dataclass
class KindTally:
    """The requests of one kind: how each ended and how long each took (real seconds)."""

    ok: int = 0
    overload: int = 0
    errors: int = 0
    seconds: list[float] = field(default_factory=list)
    error_codes: dict[str, int] = field(default_factory=dict)

    @property
    def answered(self) -> int:
        return self.ok + self.overload + self.errors


class RequestTally:
    """Every request of a run, by kind; shared by the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.kinds: dict[str, KindTally] = {kind: KindTally() for kind in KINDS}
        self.started_at: list[float] = []  # monotonic times, for the arrival rate

    def record(self, kind: str, began: float, error: ContactError | None) -> None:
        took = time.monotonic() - began
        with self._lock:
            tally = self.kinds.setdefault(kind, KindTally())
            tally.seconds.append(took)
            self.started_at.append(began)
            if error is None:
                tally.ok += 1
            elif is_overload(error):
                tally.overload += 1
            else:
                tally.errors += 1
                tally.error_codes[error.code] = tally.error_codes.get(error.code, 0) + 1

    @property
    def overload(self) -> int:
        return sum(k.overload for k in self.kinds.values())

    @property
    def errors(self) -> int:
        return sum(k.errors for k in self.kinds.values())


@dataclass(frozen=True)
class FleetSettings:
    """What every device of a fleet shares: where the authority is, and how to reach it."""

    deployment_url: str
    token: str
    pins: tuple[str, ...]
    org: str
    devices_dir: Path  # each device's credential file, as the agent keeps it
    request_timeout: float = 30.0

    def client(self) -> AuthorityClient:
        return AuthorityClient(self.deployment_url, pins=self.pins, timeout=self.request_timeout)


@dataclass
class DeviceRecord:
    """What a device went through, for the report (real monotonic times)."""

    started: float | None = None  # its first attempt began
    registered: float | None = None
    committed: float | None = None
    snapshot_id: str | None = None
    re_registered: int = 0  # registrations answered `already_registered`
    attempts_failed: int = 0


class SimulatedDevice:
    """One device's agent: `step` decides, this object does what the daemon would do."""

    def __init__(
        self, index: int, fleet: FleetSettings, tally: RequestTally, *, seed: int, prefix: str
    ) -> None:
        self.index = index
        self.fleet = fleet
        self.tally = tally
        self.rng = random.Random(f"{seed}:{prefix}:{index}")  # noqa: S311  # jitter, not secrecy
        guid = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        machine = hashlib.sha256(f"holdfast-hardware:{prefix}-{seed}-{index}".encode())
        self.identity = Identity(guid, machine.hexdigest(), "")
        self.name = f"{prefix}-{index:05d}"
        self.username = f"{prefix}.user{index:05d}@fleet.example.com"
        self.home = f"/home/{prefix}.user{index:05d}"
        self.phase_offset = device_phase(guid)
        self.master_key = self.rng.randbytes(32)
        self.state = State()
        self.policy: Policy | None = None
        self.credential: str | None = None
        self.record = DeviceRecord()

    @property
    def guid(self) -> str:
        return self.identity.guid

    @property
    def done(self) -> bool:
        """The first snapshot is committed: what this simulation asks of a device."""
        return self.state.last_backup is not None

    def env(self) -> Env:
        settings = self.policy.settings if self.policy else None
        return Env(AgentConfig().timings(settings), self.rng.random(), self.phase_offset)

    # The daemon's loop, for one wake-up

    def wake(self, client: AuthorityClient, clock: Clock) -> dt.datetime | None:
        """Run what is due now (an attempt, and what follows it at once, as the daemon's
        loop does); the time of the next attempt, or None when done or none is scheduled."""
        if self.record.started is None:
            self.record.started = time.monotonic()
            self.feed(Started(configured=True), client, clock)
        else:
            self.feed(Tick(), client, clock)
        while not self.done:
            due = self.state.next_attempt_at
            if due is None or due > clock.now():
                return due
            self.feed(Tick(), client, clock)
        return None

    def feed(self, event: Event, client: AuthorityClient, clock: Clock) -> None:
        queue: list[Event] = [event]
        while queue:
            current = queue.pop(0)
            before = self.state
            self.state, actions = step(self.state, current, clock.now(), self.env())
            if self.state.attempts > before.attempts:
                self.record.attempts_failed += 1
            for action in actions:
                outcome = self._perform(action, client, clock)
                if outcome is not None:
                    queue.append(outcome)

    def _perform(self, action: Action, client: AuthorityClient, clock: Clock) -> Event | None:
        try:
            return self._do(action, client, clock)
        except ContactError as exc:
            return failure_of(exc)

    def _do(self, action: Action, client: AuthorityClient, clock: Clock) -> Event | None:
        if isinstance(action, FetchPolicy):
            return self._check_in(client) if action.as_device else self._fetch_policy(client)
        if isinstance(action, RunDetection):
            # The policy's script is not run: each device reports its own user and home.
            return UserDetected(self.username, self.home)
        if isinstance(action, Register):
            return self._register(action, client)
        if isinstance(action, RunBackup):
            return self._first_snapshot(client, clock)
        return None  # StartBackups: the first backup's attempt is already due

    def report(self) -> dict[str, Any]:
        """What every request carries (docs/contract.md 9.2), as the daemon builds it."""
        return {
            "os": "linux",
            "device_guid": self.guid,
            "device_name": self.name,
            "agent_version": __version__,
            "phase": self.state.phase.value,
            "last_error": self.state.last_error,
        }

    def _call(self, kind: str, operation: Callable[[], T]) -> T:
        began = time.monotonic()
        try:
            result = operation()
        except ContactError as exc:
            self.tally.record(kind, began, exc)
            raise
        self.tally.record(kind, began, None)
        return result

    def _fetch_policy(self, client: AuthorityClient) -> Event:
        document = self._call(
            "deploy/policy", lambda: client.fetch_policy(self.fleet.token, self.report())
        )
        self.policy = Policy.from_document(document)
        return PolicyFound(self.policy.org, self.policy.registration)

    def _register(self, action: Register, client: AuthorityClient) -> Event:
        answer = self._call(
            "deploy/register",
            lambda: register(
                client,
                token=self.fleet.token,
                identity=self.identity,
                report=self.report(),
                username=action.username,
                user_home=action.user_home,
                credential_path=self.fleet.devices_dir / f"{self.index:05d}.credential",
            ),
        )
        self.credential = (
            (self.fleet.devices_dir / f"{self.index:05d}.credential").read_text("ascii").strip()
        )
        if self.record.registered is None:
            self.record.registered = time.monotonic()
        else:
            self.record.re_registered += 1
        return Registered(answer.username, action.user_home, answer.registered_at)

    def _check_in(self, client: AuthorityClient) -> Event:
        credential = self.credential
        if credential is None:
            return CredentialRejected("the device credential is missing; registering again")
        try:
            document = self._call(
                "device/policy", lambda: client.device_policy(credential, self.report())
            )
        except PermanentError as exc:
            if exc.code in ("credential_invalid", "credential_missing"):
                return CredentialRejected(exc.message)
            raise
        self.policy = Policy.from_document(document)
        return CheckedIn(self.policy.org)

    def _first_snapshot(self, client: AuthorityClient, clock: Clock) -> Event:
        """One small file and its manifest, sealed and sent as the engine would."""
        credential = self.credential
        if credential is None:
            return CredentialRejected("the device credential is missing; registering again")
        retry = Retrier(clock.sleep, rand=self.rng.random)
        keys = Subkeys.from_master(self.master_key)
        started_at = clock.now().isoformat()
        data = f"{self.username}: the first file of {self.name}\n".encode()
        data_id = chunk_id(keys, data)
        entry = {
            "path": "notes.txt",
            "type": "file",
            "mode": 0o644,
            "mtime_ns": 1_700_000_000_000_000_000 + self.index,
            "size": len(data),
            "chunks": [data_id],
        }
        document = manifest.encode(self.home, started_at, [entry])
        manifest_id = chunk_id(keys, document)
        plain = {data_id: data, manifest_id: document}
        missing = retry(
            lambda: self._call(
                "chunks/missing", lambda: client.missing_chunks(credential, list(plain))
            )
        )
        if missing:
            packer = Packer()
            for cid in missing:
                packer.add(cid, *seal_parts(keys, cid, plain[cid]))
            pack = packer.finish()
            retry(
                lambda: self._call(
                    "packs",
                    lambda: client.put_pack(
                        credential, pack.pack_id, pack.parts, pack.index_header
                    ),
                )
            )
        finished_at = clock.now().isoformat()
        answer = retry(
            lambda: self._call(
                "snapshots",
                lambda: client.commit_snapshot(
                    credential,
                    {
                        "manifest_id": manifest_id,
                        "files": 1,
                        "bytes": len(data),
                        "started_at": started_at,
                        "finished_at": finished_at,
                    },
                ),
            )
        )
        self.record.committed = time.monotonic()
        self.record.snapshot_id = str(answer.get("snapshot_id", ""))
        return BackupDone(self.record.snapshot_id, finished_at, 1, len(data))


__all__ = [
    "KINDS",
    "Clock",
    "DeviceRecord",
    "FleetSettings",
    "KindTally",
    "RequestTally",
    "SimulatedDevice",
    "is_overload",
]
