"""The detection script's run on Linux and macOS: start it, read its output, kill all it left.

    sandbox.plan(settings) ─▶ Plan ─▶ run(plan, argv, ...) ─▶ ScriptRun

What contains the run (account, rlimits, bubblewrap or sandbox-exec command) is decided by
agent.sandbox; this module carries it out. The script starts in a new session, as the account,
with its rlimits (and on Linux a parent-death signal) set in the child before exec. Both output
streams are read together up to the cap, the deadline and the stop request polled throughout.
Then the session is killed as a whole, and every process of the account that appeared below
the agent since the start is killed, round after round, until no new one appears.

Under bubblewrap, the end of its PID namespace takes everything in it. Without a strong layer
the agent makes itself a child subreaper on Linux, so an orphan that left the session is
reparented to the agent and swept with the rest; macOS has no subreaper.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import psutil

from agent import logs
from agent.errors import DetectionError
from agent.sandbox import (
    Isolation,
    Limits,
    Plan,
    SandboxSettings,
    ScriptRun,
    bwrap_command,
    environment,
    hideable,
    popen_identity,
    sandbox_exec_command,
)

log = logging.getLogger(logs.LOGGER)

# Once the script has exited, descendants it left behind may still hold its pipes open: wait
# this long for them to finish writing, then stop reading (they are killed with the rest).
_PIPE_GRACE_S = 0.5
_POLL_S = 0.05
# A fork bomb refills the process table while it is being killed; a killed process forks no
# more, so each round leaves fewer, and a few rounds empty it.
_SWEEP_ROUNDS = 50
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


def run(
    chosen: Plan,
    argv: Sequence[str],
    *,
    scratch: str,
    timeout_s: float,
    should_stop: Callable[[], bool] | None = None,
) -> ScriptRun:
    """Run `argv` in `scratch` (a folder the account owns), contained as `chosen` says.

    MUST leave no process of the run alive when it returns or raises. A start failure raises
    DetectionError; any other outcome, a kill by the sandbox included, is in the ScriptRun.
    """
    account, settings = chosen.account, chosen.settings
    env = environment(scratch, os.environ.get("LANG"))
    hidden = [f for f in settings.hidden if hideable(os.path.realpath(f), account)]
    command = list(argv)
    if chosen.isolation is Isolation.BUBBLEWRAP and settings.bwrap is not None:
        command = bwrap_command(settings.bwrap, argv, scratch=scratch, hidden=hidden, env=env)
    elif chosen.isolation is Isolation.SANDBOX_EXEC and settings.sandbox_exec is not None:
        command = sandbox_exec_command(settings.sandbox_exec, argv, scratch=scratch, hidden=hidden)
    else:
        _become_subreaper()
    limits = Limits.for_run(timeout_s, _processes_of(account.uid))
    before = {_key(p) for p in _below_agent()}
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=scratch,
            env=env,
            start_new_session=True,
            preexec_fn=_child_setup(limits.rlimits()),  # noqa: PLW1509  # see _child_setup
            **popen_identity(account),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise _not_started(command[0], os.path.basename(argv[-1]), exc) from exc
    with proc:
        try:
            out, err, stopped_for, stream = _read_output(
                proc, started + timeout_s, settings, should_stop
            )
        finally:
            _contain(proc, before, account.uid)
        exit_code = proc.wait()
    return ScriptRun(
        exit_code=exit_code,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        duration_s=time.monotonic() - started,
        stopped_for=stopped_for,
        stream=stream,
    )


def _child_setup(rlimits: list[tuple[str, int, int]]) -> Callable[[], None]:
    """What the child does after dropping to the account and before exec.

    It runs in a fork of a threaded agent (the control channel serves from threads), which is
    why it only makes syscalls on values prepared here in the parent: no lock, no logging,
    no import, nothing another thread could have held at the fork.
    """
    import resource

    limits = [(getattr(resource, name), soft, hard) for name, soft, hard in rlimits]
    prctl = _libc_function("prctl") if sys.platform == "linux" else None

    def setup() -> None:
        for which, soft, hard in limits:
            resource.setrlimit(which, (soft, hard))
        if prctl is not None:  # after the uid change, which clears it: die with the agent
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return setup


def _read_output(
    proc: subprocess.Popen[bytes],
    deadline: float,
    settings: SandboxSettings,
    should_stop: Callable[[], bool] | None,
) -> tuple[bytes, bytes, str | None, str]:
    """Both streams until the script exits or is stopped, read together so that neither can
    fill its pipe and stall the script; the deadline and the stop request hold throughout,
    even after the script closed both streams."""
    assert proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    buffers = {fd: bytearray() for fd in streams}
    stopped_for: str | None = None
    stream, exited_at = "", None
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        while stopped_for is None:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if now >= deadline:
                stopped_for = "timeout"
            elif should_stop is not None and should_stop():
                stopped_for = "stop_requested"
            elif exited_at is not None and (
                not selector.get_map() or now - exited_at >= _PIPE_GRACE_S
            ):
                break
            elif not selector.get_map():  # both streams closed, the script still running
                time.sleep(min(_POLL_S, deadline - now))
            else:
                for key, _ in selector.select(timeout=min(_POLL_S, deadline - now)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fd)
                        continue
                    buffers[key.fd] += chunk
                    if len(buffers[key.fd]) > settings.output_cap:
                        del buffers[key.fd][settings.output_cap :]
                        stopped_for, stream = "too_much_output", streams[key.fd]
                        break
    stdout_fd, stderr_fd = streams
    return bytes(buffers[stdout_fd]), bytes(buffers[stderr_fd]), stopped_for, stream


def _contain(proc: subprocess.Popen[bytes], before: set[tuple[int, float]], uid: int) -> None:
    """Kill the run's session, then each process of the account that appeared below the agent.

    Under bubblewrap, killing bwrap ends its PID namespace and everything in it; otherwise
    the agent is a subreaper (Linux), so a process that left the session is still below it.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # a group outlives its leader: its id is not reused
    if proc.poll() is None:
        proc.kill()
    for _ in range(_SWEEP_ROUNDS):
        strays, ours = [], []
        for process in _below_agent():
            with contextlib.suppress(psutil.Error):
                if process.pid != proc.pid and _key(process) not in before:
                    if process.uids().real == uid:
                        process.kill()  # psutil checks the pid was not reused meanwhile
                        strays.append(process)
                    if process.ppid() == os.getpid():
                        ours.append(process)
        if not strays:
            return
        # Orphans reparented to the agent are its children now: reap them, or zombies stay.
        psutil.wait_procs(ours, timeout=1)
    log.error("detection script processes still appeared after %d kill rounds", _SWEEP_ROUNDS)


def _below_agent() -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process().children(recursive=True)
    return []


def _key(process: psutil.Process) -> tuple[int, float]:
    with contextlib.suppress(psutil.Error):
        return process.pid, process.create_time()
    return process.pid, 0.0


def _processes_of(uid: int) -> int:
    uids = (p.info["uids"] for p in psutil.process_iter(["uids"]))
    return sum(1 for u in uids if u is not None and u.real == uid)


_subreaper = False


def _become_subreaper() -> None:
    """Make orphans of a script the agent's children, not init's, so the sweep finds them."""
    global _subreaper  # noqa: PLW0603  # a property of the whole process, set once
    if sys.platform == "linux" and not _subreaper:
        prctl = _libc_function("prctl")
        _subreaper = prctl is not None and prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        if not _subreaper:
            log.warning("not a subreaper: processes a detection script orphans may survive it")


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    return function


def _not_started(program: str, filename: str, exc: BaseException) -> DetectionError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC):
        return DetectionError(
            "interpreter_missing",
            f"{program}, which runs the detection script {filename}, could not be started "
            f"({reason})",
        )
    return DetectionError(
        "start_failed", f"the detection script {filename} could not be started ({reason})"
    )


__all__ = ["run"]
