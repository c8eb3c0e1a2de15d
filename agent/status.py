"""`holdfast status`: where the agent stands, from the persisted state, daemon running or not."""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

import psutil

from agent import events
from agent.backup.progress import PROGRESS_FILE, read_progress
from agent.deploy_args import read_properties_file
from agent.errors import AgentError, UsageError
from agent.identity import IDENTITY_VERSION
from agent.lifecycle import Phase, State
from agent.paths import AgentPaths
from agent.state import StateError, load_state, read_json, write_atomic

_WAITING_FOR = {
    Phase.UNCONFIGURED: "installer arguments (deploy.properties or run --deploy-args)",
    Phase.AWAITING_POLICY: "the deployment policy from the authority",
    Phase.AWAITING_REGISTRATION: "user detection and registration",
    Phase.AWAITING_SIGN_IN: "the user to sign in (manual registration policy)",
    Phase.BACKING_UP: "the next scheduled backup",
    Phase.STOPPED: "a user to start it again",
}


def read_pid_file(paths: AgentPaths) -> int | None:
    """The running daemon's pid, or None (no file, or a stale one from a dead process)."""
    try:
        body = json.loads(paths.pid_file.read_text("utf-8"))
        pid, created = int(body["pid"]), float(body["create_time"])
        process = psutil.Process(pid)
        if abs(process.create_time() - created) > 1.0:
            return None  # the pid was reused by another process
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    return pid


def claim_pid_file(paths: AgentPaths, version: str) -> None:
    """Record this process as the running daemon; refuses when another one runs."""
    existing = read_pid_file(paths)
    if existing is not None and existing != os.getpid():
        raise AgentError(f"the agent is already running (pid {existing})")
    me = psutil.Process()
    body = {"pid": me.pid, "create_time": me.create_time(), "version": version}
    write_atomic(paths.pid_file, (json.dumps(body) + "\n").encode(), mode=0o644)


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def collect(paths: AgentPaths) -> dict[str, Any]:
    """The status object of CONTRACT.md section 5 (never the token)."""
    problems: list[str] = []
    try:
        state = load_state(paths.state_file)
    except StateError as exc:
        state, problems = State(), [exc.message]
    except PermissionError as exc:
        state, problems = State(), [f"cannot read the agent's state: {exc.strerror}"]
    url = state.facts.get("deployment_url")
    try:
        if paths.deploy_properties.exists():
            url = read_properties_file(paths.deploy_properties).deployment_url
    except UsageError as exc:
        problems.append(exc.message)
    except PermissionError:
        pass  # conf/ is the service account's: the URL the daemon last used is in the state
    guid = None
    try:
        identity = read_json(paths.identity, IDENTITY_VERSION)
        guid = str(identity["guid"]) if identity else None
    except (StateError, KeyError) as exc:
        problems.append(str(exc))
    registered = state.registered_at is not None and state.phase in (
        Phase.BACKING_UP,
        Phase.STOPPED,
    )
    running = read_pid_file(paths) is not None
    return {
        "phase": state.phase.value,
        "daemon_running": running,
        "since": _iso(state.since),
        "next_attempt_at": _iso(state.next_attempt_at),
        "attempts": state.attempts,
        "last_error": state.last_error,
        "last_error_code": state.last_error_code,
        "waiting_for": _WAITING_FOR[state.phase],
        "deployment_url": url,
        "org": state.org,
        "username": state.username,
        "user_home": state.user_home,
        "device_guid": guid,
        "registered": registered,
        "registered_at": state.registered_at,
        "stopped_by": state.stopped_by,
        "resume_phase": state.resume_phase.value if state.resume_phase else None,
        "last_backup": state.last_backup,
        # A daemon killed during a backup leaves its progress file: no daemon, no backup.
        "backup_running": read_progress(paths.run / PROGRESS_FILE) if running else None,
        "tray_hidden": bool(state.facts.get("cloaked", False)),
        "registration_warning": state.facts.get("registration_warning"),
        "problems": problems,
    }


def _backup_line(status: dict[str, Any]) -> str:
    running = status.get("backup_running")
    if running:
        return (
            f"Backup running: {running.get('files', 0)} files, "
            f"{running.get('read_bytes', 0) / 1e6:.1f} MB read, "
            f"{running.get('sent_bytes', 0) / 1e6:.1f} MB sent"
        )
    last = status["last_backup"]
    if not last:
        return "Last backup:    none yet"
    return (
        f"Last backup:    {last['finished_at']} ({last['files']} files, "
        f"{last['bytes'] / 1e6:.1f} MB, snapshot {last['snapshot_id']})"
    )


def _last_error(status: dict[str, Any]) -> str:
    """The sentence, with its code and the event ID that docs/operations.md explains."""
    error, code = status.get("last_error"), status.get("last_error_code")
    if not error:
        return "-"
    if not code:
        return str(error)
    return f"{error} ({code}, {events.for_failure(str(code), str(error))} in the guide)"


def render(status: dict[str, Any]) -> str:
    def local(iso: str | None) -> str:
        if not iso:
            return "-"
        return dt.datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")

    lines = [
        f"Phase:          {status['phase']} since {local(status['since'])}"
        + ("" if status["daemon_running"] else "  (the agent is not running)"),
        f"Waiting for:    {status['waiting_for']}",
        f"Next attempt:   {local(status['next_attempt_at'])}",
        f"Failed attempts in this phase: {status['attempts']}",
        f"Last error:     {_last_error(status)}",
        f"Authority:      {status['deployment_url'] or '-'}",
        f"Organization:   {status['org'] or '-'}",
        f"User:           {status['username'] or '-'} ({status['user_home'] or 'home unknown'})",
        f"Device:         {status['device_guid'] or '-'}"
        + (f", registered {local(status['registered_at'])}" if status["registered"] else ""),
        _backup_line(status),
    ]
    if status["stopped_by"]:
        lines.append(f"Stopped by:     {status['stopped_by']}")
    if status.get("registration_warning"):
        lines.append(f"Warning:        {status['registration_warning']}")
    lines += [f"Problem:        {p}" for p in status["problems"]]
    return "\n".join(line for line in lines if line)


__all__ = ["claim_pid_file", "collect", "read_pid_file", "render"]
