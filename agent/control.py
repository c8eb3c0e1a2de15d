"""The local control channel: how `holdfast stop/start/status` and the tray talk to the daemon.

A Unix domain socket `run/control.sock` (mode 0666 in a 0755 folder: every local user can
connect, and what they may do is decided here, on the daemon's side, from the peer's
identity as the kernel reports it: SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS). Nothing
on the network can reach it.

Protocol: one request per connection, one JSON object on one line (at most 64 KiB):
    {"command": "status" | "stop" | "start" | "backup-now" | "sign-in", "args": {...}}
answered by one line:
    {"ok": true, "result": {...}}  or  {"ok": false, "code": "...", "message": "..."}

Garbage, oversized or half-sent requests and floods of connections get an error or a
closed connection, never a stuck or crashed daemon: each connection has a deadline, and
at most MAX_CLIENTS are served at once (more are closed at once).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import logs
from agent.errors import AgentError, DaemonUnavailable, Refused, UsageError

log = logging.getLogger(logs.LOGGER)

SOCKET_NAME = "control.sock"
MAX_MESSAGE = 64 * 1024
CLIENT_DEADLINE_SECONDS = 5.0
MAX_CLIENTS = 16
COMMANDS = ("status", "stop", "start", "backup-now", "sign-in")
# Commands a non-administrator may ever ask for; status is harmless, stop/start are the
# user's right unless the policy says otherwise. sign-in has a rule of its own (authorize).
USER_COMMANDS = ("status", "stop", "start", "backup-now")
# How long a control thread waits for the loop to carry a command out; a sign-in waits for the
# authority too (and, through it, for an LDAP directory).
ANSWER_SECONDS = 20.0
SIGN_IN_ANSWER_SECONDS = 90.0


@dataclass(frozen=True)
class Peer:
    """Who is on the other end, as the kernel says."""

    pid: int
    uid: int
    gid: int

    @property
    def name(self) -> str:
        import pwd  # POSIX only; the Windows channel names its peer another way

        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid {self.uid}"

    @property
    def home(self) -> str | None:
        import pwd

        try:
            return pwd.getpwuid(self.uid).pw_dir
        except KeyError:
            return None

    def describe(self) -> str:
        return f"{self.name} (uid {self.uid}, pid {self.pid})"


def peer_of(conn: socket.socket) -> Peer:
    if sys.platform.startswith("linux"):
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return Peer(pid, uid, gid)
    # macOS: LOCAL_PEERCRED (0x001) at SOL_LOCAL (0) gives a struct xucred:
    # u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16].
    raw = conn.getsockopt(0, 0x001, struct.calcsize("IIh16I"))
    _version, uid, _ngroups, *groups = struct.unpack("IIh16I", raw)
    return Peer(-1, uid, groups[0] if groups else -1)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def authorize(
    command: str,
    peer: Peer,
    *,
    registered_user_home: str | None,
    registered_username: str | None,
    console_users: Iterable[str],
    allow_user_stop: bool,
    detected_username: str | None = None,
    detected_user_home: str | None = None,
) -> Decision:
    """Who may do what (pure, so every rule is tested without sockets).

    root may do anything; the device's registered user (before registration: anyone with a
    local session) may check status, stop, start and ask for a backup, unless the policy
    forbids user stop; anyone else is refused.

    sign-in (manual registration) is for root, and for a user with a session who is the user
    detection found, when it found one: a sign-in makes the device, and the detected home
    the daemon reads as root, someone's backup, so another local user must not sign it into
    their own account and restore that home's files from it. The password proves the account.
    """
    if peer.uid == 0:
        return Decision(True, "administrator")
    if command == "status":
        return Decision(True, "status is for everyone on the device")
    if command == "sign-in":
        refusal = _sign_in_refusal(peer, detected_username, detected_user_home, set(console_users))
        return Decision(refusal is None, refusal or "the device's user")
    refusal = _user_refusal(
        command, peer, registered_user_home, registered_username, set(console_users)
    )
    if refusal is None and command == "stop" and not allow_user_stop:
        refusal = "the organization's policy does not allow users to stop backups"
    return Decision(refusal is None, refusal or "the device's user")


def _user_refusal(
    command: str,
    peer: Peer,
    registered_user_home: str | None,
    registered_username: str | None,
    console_users: set[str],
) -> str | None:
    if command not in USER_COMMANDS:
        return f"only an administrator may use {command}"
    if registered_user_home or registered_username:
        if not _is_user(peer, registered_username, registered_user_home):
            return f"{peer.name} is not this device's user"
    elif peer.name not in console_users:
        return f"{peer.name} has no session on this device"
    return None


def _is_user(peer: Peer, username: str | None, user_home: str | None) -> bool:
    """Whether `peer` is the account named by a username (or its e-mail local part) or home."""
    local_part = (username or "").partition("@")[0]
    by_home = user_home is not None and peer.home == user_home
    return by_home or (username is not None and peer.name in (username, local_part))


def _sign_in_refusal(
    peer: Peer, username: str | None, user_home: str | None, console_users: set[str]
) -> str | None:
    if peer.name not in console_users:
        return f"{peer.name} has no session on this device"
    if (username or user_home) and not _is_user(peer, username, user_home):
        return (
            f"{peer.name} is not the user detected on this device ({username}); "
            "that user, or an administrator, may sign in"
        )
    return None


def _reply(conn: socket.socket, body: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall((json.dumps(body) + "\n").encode())


def _read_request(conn: socket.socket) -> dict[str, Any]:
    deadline = time.monotonic() + CLIENT_DEADLINE_SECONDS
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UsageError("the request did not arrive in time")
        conn.settimeout(remaining)
        chunk = conn.recv(4096)
        if not chunk:
            break  # half-closed: take what came, if it is a whole request
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise UsageError(f"the request is larger than {MAX_MESSAGE} bytes")
    try:
        request = json.loads(data.partition(b"\n")[0] or b"null")
    except (ValueError, UnicodeDecodeError):
        raise UsageError("the request is not JSON") from None
    if not isinstance(request, dict) or request.get("command") not in COMMANDS:
        raise UsageError(f"the request must name a command: {', '.join(COMMANDS)}")
    if not isinstance(request.get("args", {}), dict):
        raise UsageError("args must be an object")
    return request


Handler = Callable[[str, dict[str, Any], Peer], dict[str, Any]]


class ControlServer:
    """Serves the control socket on background threads; `handler` does the work."""

    def __init__(self, run_dir: Path, handler: Handler) -> None:
        self.path = run_dir / SOCKET_NAME
        self.handler = handler
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a stale socket from a crashed daemon
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        # Every local user may connect; authorize() decides what each may do.
        os.chmod(self.path, 0o666)  # noqa: S103
        sock.listen(128)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._closing.is_set():
            try:
                conn, _addr = self._sock.accept()
            except OSError:
                if self._closing.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                _reply(conn, {"ok": False, "code": "busy", "message": "too many requests; retry"})
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            peer = peer_of(conn)
            try:
                request = _read_request(conn)
                result = self.handler(request["command"], request.get("args", {}), peer)
                _reply(conn, {"ok": True, "result": result})
            except Refused as exc:
                log.warning("control: refused %s", exc.message)
                _reply(conn, {"ok": False, "code": "refused", "message": exc.message})
            except UsageError as exc:
                _reply(conn, {"ok": False, "code": "usage", "message": exc.message})
            except AgentError as exc:
                _reply(conn, {"ok": False, "code": "bad_request", "message": exc.message})
            except OSError:
                pass  # the client went away
            except Exception:  # a bug in a handler must not take the daemon down
                log.exception("control: unexpected error serving %s", peer.describe())
                _reply(conn, {"ok": False, "code": "internal", "message": "internal error"})
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            self._slots.release()


@dataclass
class ControlRequest:
    """A command from the control channel, waiting for the daemon's loop to carry it out."""

    command: str
    peer: Peer
    # Out of repr: a sign-in's arguments carry the user's password.
    args: dict[str, Any] = field(default_factory=dict, repr=False)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] = field(default_factory=dict)
    error: AgentError | None = None  # raised again on the control thread, its kind kept


class RequestQueue:
    """Hands requests from control threads to the daemon's loop, the only one that acts."""

    def __init__(self, wake: threading.Event, answer_seconds: float = ANSWER_SECONDS) -> None:
        self._queue: queue.Queue[ControlRequest] = queue.Queue()
        self._wake = wake
        self._answer_seconds = answer_seconds

    def submit(self, command: str, args: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """On a control thread: queue the request, wake the loop, wait for its answer.

        The loop's error is raised here with its kind (usage, refusal, failure), which
        decides the code the client gets and so the command's exit code.
        """
        request = ControlRequest(command, peer, dict(args))
        self._queue.put(request)
        self._wake.set()
        wait = self._answer_seconds
        if command == "sign-in":
            wait = max(wait, SIGN_IN_ANSWER_SECONDS)
        if not request.done.wait(wait):
            raise AgentError(
                f"the agent accepted {command} but is still busy with its current step; "
                "it carries it out when that step ends"
            )
        if request.error is not None:
            raise request.error
        return request.result

    def empty(self) -> bool:
        return self._queue.empty()

    def drain(self, carry_out: Callable[[ControlRequest], None]) -> None:
        """On the loop: carry out every waiting request, answering each."""
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                carry_out(request)
            except AgentError as exc:
                request.error = exc
            finally:
                request.args.clear()  # a password lives no longer than its request
                request.done.set()

    def refuse_all(self, reason: str) -> None:
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            request.args.clear()
            request.error = AgentError(reason)
            request.done.set()


def call(
    run_dir: Path, command: str, args: dict[str, Any] | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Ask the daemon; its result, or DaemonUnavailable (exit 3) / Refused (exit 4) /
    UsageError (exit 2) / AgentError (exit 1)."""
    path = run_dir / SOCKET_NAME
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            # A blocking connect waits for room in a full backlog (a flood of other
            # clients), where a non-blocking one would fail at once with EAGAIN.
            sock.connect(str(path))
            sock.settimeout(timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonUnavailable(
                f"the agent is not running (no control socket at {path}); start its service"
            ) from None
        except PermissionError:
            raise Refused(f"not permitted to reach the agent at {path}") from None
        sock.sendall((json.dumps({"command": command, "args": args or {}}) + "\n").encode())
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise DaemonUnavailable(f"the agent did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise DaemonUnavailable(f"cannot talk to the agent: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(data)
    except ValueError:
        raise DaemonUnavailable("the agent's answer was not understood") from None
    if answer.get("ok"):
        result: dict[str, Any] = answer.get("result") or {}
        return result
    if answer.get("code") == "refused":
        raise Refused(str(answer.get("message")))
    if answer.get("code") == "usage":
        raise UsageError(str(answer.get("message")))
    raise AgentError(str(answer.get("message")))


__all__ = [
    "ANSWER_SECONDS",
    "COMMANDS",
    "SIGN_IN_ANSWER_SECONDS",
    "ControlRequest",
    "ControlServer",
    "Decision",
    "Peer",
    "RequestQueue",
    "authorize",
    "call",
    "peer_of",
]
