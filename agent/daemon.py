"""The agent's only loop: performs the lifecycle's actions, persists, sleeps until due.

Signal handlers only set a flag and write a byte to a pipe, which a thread of the daemon
turns into a wake-up of the loop; the loop persists and exits cleanly.
State is written atomically after every transition, so a restart (or a crash, or a
reboot) resumes the phase the agent was in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import random
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import Any

import psutil

from agent import __version__, events, logs
from agent.backup.progress import PROGRESS_FILE
from agent.config import AgentConfig
from agent.config import load as load_config
from agent.control import ControlRequest, ControlServer, Peer, RequestQueue, authorize
from agent.deploy_args import DeployArgs, read_properties_file
from agent.device import authority_client
from agent.errors import AgentError, ContactError, PermanentError, Refused, UsageError
from agent.identity import Identity, hardware_id, load_or_create, renew
from agent.lifecycle import (
    Action,
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
    Started,
    StartRequested,
    State,
    StopRequested,
    Tick,
    UserDetected,
    device_phase,
    step,
)
from agent.logs import log_transition, when
from agent.paths import AgentPaths
from agent.policy import Policy, this_os
from agent.registration import load_credential, register, sign_in, sign_in_failure
from agent.state import load_state, recover, save_state, sweep_temporaries
from agent.status import claim_pid_file, collect
from agent.transport import AuthorityClient

log = logging.getLogger(logs.LOGGER)
Clock = Callable[[], dt.datetime]
UNCONFIGURED_POLL_SECONDS = 60.0
MAX_SLEEP_SECONDS = 3600.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def failure_of(exc: ContactError | AgentError | OSError) -> Failed:
    """The failed attempt an action's exception makes (its code says the situation)."""
    if isinstance(exc, ContactError):
        return Failed(
            exc.code,
            exc.message,
            permanent=isinstance(exc, PermanentError),
            retry_after=getattr(exc, "retry_after", None),
        )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" ({exc.filename})" if exc.filename else ""
        return Failed("disk_full", f"the agent's disk is full{where}: {exc.strerror}")
    return Failed("local_error", str(exc))


class Daemon:
    """One running agent over one set of folders."""

    def __init__(
        self, paths: AgentPaths, *, clock: Clock = utcnow, rng: random.Random | None = None
    ) -> None:
        self.paths = paths
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311  # jitter, not secrecy
        self.wake = threading.Event()
        self.stopping = False
        self.config = AgentConfig()
        self.state = State()
        self.args: DeployArgs | None = None
        self.policy: Policy | None = None
        self.identity: Identity | None = None
        self.requests = RequestQueue(self.wake)
        self.backup_wanted = False
        self.backup_cancel = threading.Event()
        self.unsaved = False  # the latest state could not be saved (a full disk)
        self._signal_pipe = -1  # the write end the signal handler wakes the loop through

    # Signals and the loop

    def request_stop(self) -> None:
        """Ask the loop to persist and return; safe from a signal handler or another thread."""
        self.stopping = True
        self.backup_cancel.set()  # a running backup ends; its snapshot is simply not made
        self.wake.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # A flag and a byte only: request_stop() here could deadlock, for the handler runs on
        # the main thread, which may be holding `wake`'s own lock (inside wait() or clear()).
        self.stopping = True
        with contextlib.suppress(OSError):  # a full pipe: a stop is on its way already
            os.write(self._signal_pipe, b"\0")

    def _catch_signals(self) -> Callable[[], None]:
        """SIGTERM and SIGINT stop the loop from now on; the function returned undoes it."""
        read_end, self._signal_pipe = os.pipe()
        os.set_blocking(self._signal_pipe, False)
        threading.Thread(
            target=self._forward_signals, args=(read_end,), name="signals", daemon=True
        ).start()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._signal_pipe)  # the forwarding thread reads the end, and ends

        return restore

    def _forward_signals(self, read_end: int) -> None:
        """On a thread of its own: each byte of the signal handler becomes request_stop()."""
        try:
            while os.read(read_end, 1):
                self.request_stop()
        finally:
            os.close(read_end)

    def run(self) -> int:
        self.paths.ensure()
        self.config = load_config(self.paths.agent_yaml)
        logs.setup(
            self.paths.agent_log,
            self.config.log_level,
            log_format=self.config.log_format,
            history_file=self.paths.history_log,
            max_bytes=int(self.config.setting("log_max_mb", None)) * 1024 * 1024,
            backups=int(self.config.setting("log_files", None)),
        )
        claim_pid_file(self.paths, __version__)
        # A daemon killed during a backup left its progress behind; no backup runs yet.
        (self.paths.run / PROGRESS_FILE).unlink(missing_ok=True)
        restore_signals = None
        if threading.current_thread() is threading.main_thread():
            # A Windows service runs the daemon on the SCM's thread and stops it through
            # request_stop(); Python allows signal handlers in the main thread only.
            restore_signals = self._catch_signals()
        control = ControlServer(self.paths.run, self._on_control)
        try:
            # The channel first: a restart may begin with a long backup, and `stop` or
            # `status` must work during it.
            control.start()
            self._start()
            while not self.stopping:
                self.requests.drain(self._carry_out)
                if self.backup_wanted:
                    self.backup_wanted = False
                    self.feed(BackupRequested())
                self._unconfigured_poll()
                self.feed(Tick())
                if self.requests.empty():
                    self.wake.wait(self._sleep_seconds())
                self.wake.clear()
            log.info(
                "stopping on request; state saved (phase %s)",
                self.state.phase.value,
                extra=logs.event(events.AGENT_STOPPING),
            )
            return 0
        finally:
            control.close()
            self.requests.refuse_all("the agent is shutting down")
            self.paths.pid_file.unlink(missing_ok=True)
            logs.close()
            if restore_signals is not None:
                restore_signals()

    def _start(self) -> None:
        now = self.clock()
        for name in sweep_temporaries(self.paths.state):
            log.info("removed %s, left by a write that a crash interrupted", name)
        hardware = hardware_id(self.config.machine_id_file)
        self.identity, reason = load_or_create(self.paths.identity, hardware, now)
        self.state = recover(
            load_state,
            self.paths.state_file,
            State(),
            now,
            "the agent starts over from its first phase, with the same device identity",
        )
        if reason is not None and reason != "first start":
            # A cloned image: nothing of the original device is ours, start over as new.
            self.paths.credential.unlink(missing_ok=True)
            self.state = State()
            log.warning(
                "made a new device identity %s: %s",
                self.identity.guid,
                reason,
                extra=logs.event(events.CLONED),
            )
        elif reason == "first start":
            log.info("made the device identity %s", self.identity.guid)
        logs.phase_filter.phase = self.state.phase.value
        self.args = self._read_args()
        log.info(
            "STARTED holdfast %s, device %s, phase %s",
            __version__,
            self.identity.guid,
            self.state.phase.value,
            extra=logs.event(events.AGENT_STARTED, state=self.paths.state),
        )
        self.feed(Started(configured=self.args is not None))

    def _sleep_seconds(self) -> float:
        now = self.clock()
        if self.state.phase == Phase.UNCONFIGURED:
            return UNCONFIGURED_POLL_SECONDS
        if self.state.next_attempt_at is None:
            return MAX_SLEEP_SECONDS
        return min(MAX_SLEEP_SECONDS, max(0.0, (self.state.next_attempt_at - now).total_seconds()))

    def _unconfigured_poll(self) -> None:
        if self.state.phase == Phase.UNCONFIGURED:
            self.args = self._read_args()
            if self.args is not None:
                self.feed(Configured())

    # The control channel: its threads hand requests to this loop, the only one that acts.

    def _on_control(self, command: str, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Runs on a control thread: decide who may, then let the loop do it."""
        if command == "status":
            return collect(self.paths)
        settings = self.policy.settings if self.policy else self.state.facts.get("settings") or {}
        decision = authorize(
            command,
            peer,
            registered_user_home=self.state.user_home if self.state.registered_at else None,
            registered_username=self.state.username if self.state.registered_at else None,
            console_users=(u.name for u in psutil.users()),
            allow_user_stop=bool(settings.get("allow_user_stop", True)),
            detected_username=self.state.username,
            detected_user_home=self.state.user_home,
        )
        if not decision.allowed:
            log.warning(
                "refused %s from %s: %s",
                command,
                peer.describe(),
                decision.reason,
                extra=logs.event(events.CONTROL_REFUSED, command=command, uid=peer.uid),
            )
            raise Refused(f"{command} refused: {decision.reason}")
        if command == "stop":
            self.backup_cancel.set()  # a running backup ends now; the loop then stops
        return self.requests.submit(command, args, peer)

    def _carry_out(self, request: ControlRequest) -> None:
        by = f"{request.peer.name} at {when(self.clock())}"
        if request.command == "stop":
            log.info(
                "stopped by %s: nothing runs until started again",
                request.peer.describe(),
                extra=logs.event(events.STOPPED_BY_USER, user=request.peer.name),
            )
            self.feed(StopRequested(by))
        elif request.command == "start":
            log.info(
                "started again by %s",
                request.peer.describe(),
                extra=logs.event(events.STARTED_BY_USER, user=request.peer.name),
            )
            self.feed(StartRequested(by))
        elif request.command == "backup-now":
            # Answered at once; the loop starts the backup after this request, and the
            # command follows it through the status and run/progress.json.
            log.info(
                "backup requested by %s",
                request.peer.describe(),
                extra=logs.event(events.BACKUP_REQUESTED, user=request.peer.name),
            )
            self.backup_wanted = True
            request.result = {
                "phase": self.state.phase.value,
                "previous_backup": self.state.last_backup,
                "accepted": self.state.phase == Phase.BACKING_UP,
            }
            return
        elif request.command == "sign-in":
            request.result = self._sign_in(request)
            return
        else:
            raise AgentError(f"{request.command} is not available in this release of the agent")
        request.result = {"phase": self.state.phase.value, "stopped_by": self.state.stopped_by}

    # Events in, actions out

    def env(self) -> Env:
        settings = self.policy.settings if self.policy else self.state.facts.get("settings")
        guid = self.identity.guid if self.identity else ""
        return Env(self.config.timings(settings), self.rng.random(), device_phase(guid))

    def feed(self, event: Event) -> None:
        queue: list[Event] = [event]
        while queue:
            current = queue.pop(0)
            before = self.state
            self.state, actions = step(self.state, current, self.clock(), self.env())
            if self.state != before:
                self._save()
                log_transition(before, self.state, current, self.clock())
            for action in actions:
                outcome = self._perform(action)
                if outcome is not None:
                    queue.append(outcome)

    def _save(self) -> None:
        """Persist the state. When that fails (a full disk) the last saved state stays
        whole, the agent goes on from memory, and every later change tries again."""
        try:
            save_state(self.paths.state_file, self.state)
        except OSError as exc:
            failed = failure_of(exc)
            if not self.unsaved:
                log.warning(
                    "cannot save the state: %s; the last saved state is kept",
                    failed.message,
                    extra=logs.event(events.for_failure(failed.code), code=failed.code),
                )
            self.unsaved = True
            return
        if self.unsaved:
            log.info("the state is saved again")
            self.unsaved = False

    def _credential(self) -> str | None:
        return recover(
            load_credential,
            self.paths.credential,
            None,
            self.clock(),
            "the device registers again with its GUID",
        )

    def _perform(self, action: Action) -> Event | None:
        try:
            return self._do(action)
        except (ContactError, AgentError, OSError) as exc:
            return failure_of(exc)

    def _do(self, action: Action) -> Event | None:
        if isinstance(action, FetchPolicy):
            return self._fetch_device_policy() if action.as_device else self._fetch_policy()
        if isinstance(action, RunDetection):
            return self._detect()
        if isinstance(action, Register):
            return self._register(action)
        if isinstance(action, RunBackup):
            return self._backup()
        log.info(
            "backups of %s start; the first one at once",
            self.state.user_home,
            extra=logs.event(events.BACKUPS_START),
        )
        return None  # StartBackups: the first backup's attempt is already due

    # Actions

    def _read_args(self) -> DeployArgs | None:
        path = self.paths.deploy_properties
        if not path.exists():
            return None
        try:
            args = read_properties_file(path)
        except UsageError as exc:
            log.error(
                "installer arguments in %s are not usable: %s",
                path,
                exc.message,
                extra=logs.event(events.ARGS_UNUSABLE),
            )
            return None
        logs.redactor.add(args.token)
        tray = {"cloaked": args.cloaked, "silent": args.silent}
        if any(self.state.facts.get(k) != v for k, v in tray.items()):
            # The tray runs as the user, who cannot read conf/: it learns these from status.
            self.state = replace(self.state, facts={**self.state.facts, **tray})
            self._save()
        if self.args is None or args.token_tag() != self.args.token_tag():
            for warning in args.warnings:
                log.warning("%s", warning)
        return args

    def _client(self) -> AuthorityClient:
        assert self.args is not None
        pins = self.state.facts.get("pins", [])
        return authority_client(self.args, pins, self.config.request_timeout)

    def _report(self) -> dict[str, Any]:
        assert self.identity is not None
        return {
            "os": this_os(),
            "device_guid": self.identity.guid,
            "device_name": socket.gethostname()[:255],
            "agent_version": __version__,
            "phase": self.state.phase.value if self.state.phase != Phase.STOPPED else "stopped",
            "last_error": self.state.last_error,
        }

    def _remember_policy(self, document: dict[str, Any]) -> Policy:
        policy = Policy.from_document(document)
        self.policy = policy
        facts = {
            **self.state.facts,
            "settings": dict(policy.settings),
            "pins": list(policy.pins),
            "deployment_url": self.args.deployment_url if self.args else None,
        }
        self.state = replace(self.state, facts=facts)
        return policy

    def _fetch_policy(self) -> Event:
        # Re-read deploy.properties on every attempt: an administrator may push a corrected
        # file or a new token without reinstalling.
        self.args = self._read_args() or self.args
        if self.args is None:
            return Failed(
                "unconfigured", f"no installer arguments in {self.paths.deploy_properties}"
            )
        log.info(
            "Retrieving deployment policy from %s (token %s)",
            self.args.deployment_url,
            self.args.token_tag(),
            extra=logs.event(events.POLICY_REQUESTED),
        )
        with self._client() as client:
            policy = self._remember_policy(client.fetch_policy(self.args.token, self._report()))
        log.info(
            "policy found: organization %r, %s registration",
            policy.org,
            policy.registration,
            extra=logs.event(events.POLICY_FOUND),
        )
        return PolicyFound(policy.org, policy.registration)

    def _fetch_device_policy(self) -> Event:
        credential = self._credential()
        if credential is None or self.args is None:
            log.warning(
                "the device credential is missing from %s",
                self.paths.credential,
                extra=logs.event(events.CREDENTIAL_REFUSED),
            )
            return CredentialRejected("the device credential is missing; registering again")
        logs.redactor.add(credential)
        try:
            with self._client() as client:
                policy = self._remember_policy(client.device_policy(credential, self._report()))
        except PermanentError as exc:
            if exc.code in ("credential_invalid", "credential_missing"):
                log.warning(
                    "the authority refused the device credential: %s",
                    exc.message,
                    extra=logs.event(events.CREDENTIAL_REFUSED, code=exc.code),
                )
                return CredentialRejected(exc.message)
            raise
        return CheckedIn(policy.org)

    def _detect(self) -> Event | None:
        # Imported here, as the backup engine in _backup: an agent that waits for its policy
        # or between backups, for months, does not keep the sandbox's modules in memory.
        from agent.detection import DetectionError, DetectionScript, SandboxSettings, detect

        if self.policy is None or self.policy.detection is None:
            return Failed(
                "no_detection_script",
                f"the policy has no detection script for {this_os()}; an administrator "
                "must add one (policy create --script)",
            )
        timeout = self.config.setting("detection_timeout_seconds", self.policy.settings)
        sandbox = SandboxSettings(
            account=self.config.detection_user,
            # The authority sends a bool; anything else truthy fails closed.
            require_strong=bool(self.policy.settings.get("require_strong_sandbox")),
            hidden=tuple(
                str(p) for p in (self.paths.conf, self.paths.state, self.paths.log, self.paths.run)
            ),
        )
        try:
            result = detect(
                DetectionScript.from_policy(self.policy.detection),
                timeout_s=timeout,
                sandbox=sandbox,
                log_path=self.paths.detection_log,
                # SIGTERM only sets the flag; the runner polls it and kills the script at once.
                should_stop=lambda: self.stopping,
            )
        except DetectionError as exc:
            if exc.code == "stopped":
                # Not a failed attempt: a restart resumes the phase with a fresh one.
                log.info(
                    "user detection interrupted: the agent is stopping",
                    extra=logs.event(events.DETECTION_INTERRUPTED),
                )
                return None
            return Failed(exc.code, f"{events.DETECTION_FAILURE_PREFIX}{exc.message}")
        if result.username is None or result.user_home is None:
            return Failed(
                "no_user_detected",
                "the detection script reported no user yet (nobody logged in?)",
            )
        log.info(
            "detected user %r, home %s (script exit %d, %.1fs)",
            result.username,
            result.user_home,
            result.run.exit_code,
            result.run.duration_s,
            extra=logs.event(events.USER_DETECTED),
        )
        return UserDetected(result.username, result.user_home)

    def _sign_in(self, request: ControlRequest) -> dict[str, Any]:
        """Manual registration, on the loop; the password lives only in `request.args`."""
        phase, home = self.state.phase, self.state.user_home
        if phase != Phase.AWAITING_SIGN_IN:
            raise UsageError(f"this device does not need a sign-in (phase {phase.value})")
        if self.args is None or self.identity is None or home is None:
            raise AgentError("this device cannot sign in yet: no installer arguments or user")
        log.info(
            "sign-in requested by %s",
            request.peer.describe(),
            extra=logs.event(events.SIGN_IN_REQUESTED, user=request.peer.name),
        )
        try:
            with self._client() as client:
                result = sign_in(
                    client,
                    token=self.args.token,
                    identity=self.identity,
                    report=self._report(),
                    given=request.args,
                    user_home=home,
                    credential_path=self.paths.credential,
                )
        except ContactError as exc:
            self._renew_if_cloned(exc)
            raise sign_in_failure(exc) from None
        log.info(
            "signed in: device %s registered to %r",
            result.device_guid,
            result.username,
            extra=logs.event(events.SIGNED_IN),
        )
        self.state = replace(
            self.state, facts={**self.state.facts, "registration_warning": result.warning}
        )
        self.feed(SignedIn(result.username, home, result.registered_at))
        return {"phase": self.state.phase.value, "username": self.state.username}

    def _renew_if_cloned(self, exc: ContactError) -> None:
        if exc.code == "device_cloned" and self.identity is not None:
            self.identity = renew(self.paths.identity, self.identity.hardware_id, self.clock())
            log.warning(
                "the authority knows this GUID from other hardware; new identity %s",
                self.identity.guid,
                extra=logs.event(events.CLONED),
            )

    def _backup(self) -> Event | None:
        # The engine (cryptography, zstandard, blake3, fastcdc, SQLite: ~10 MB resident) is
        # loaded at the first backup, not by an agent that still waits for its policy.
        from agent.backup.schedule import back_up_home

        credential = self._credential()
        if credential is None or not self.state.user_home:
            return CredentialRejected("the device credential is missing; registering again")
        settings = self.policy.settings if self.policy else self.state.facts.get("settings") or {}
        if not self.stopping and self.requests.empty():
            # A stop that arrived during the check-in is still queued: keep it cancelling.
            self.backup_cancel.clear()
        with self._client() as client:
            return back_up_home(
                client,
                credential,
                self.state.user_home,
                settings,
                state_dir=self.paths.state,
                run_dir=self.paths.run,
                cancel=self.backup_cancel,
            )

    def _register(self, action: Register) -> Event:
        assert self.args is not None and self.identity is not None
        log.info(
            "registering device %s as %r",
            self.identity.guid,
            action.username,
            extra=logs.event(events.REGISTERING),
        )
        try:
            with self._client() as client:
                result = register(
                    client,
                    token=self.args.token,
                    identity=self.identity,
                    report=self._report(),
                    username=action.username,
                    user_home=action.user_home,
                    credential_path=self.paths.credential,
                )
        except PermanentError as exc:
            self._renew_if_cloned(exc)
            raise
        log.info(
            "registered device %s to %r in organization %r",
            result.device_guid,
            result.username,
            result.org,
            extra=logs.event(events.REGISTERED),
        )
        self.state = replace(
            self.state, facts={**self.state.facts, "registration_warning": result.warning}
        )
        return Registered(result.username, action.user_home, result.registered_at)


__all__ = ["Daemon", "utcnow"]
