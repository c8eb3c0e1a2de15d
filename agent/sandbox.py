"""The sandbox a detection script runs in: its account, limits, command and isolation layer.

    plan(settings) ─▶ Plan(account, isolation) ─▶ sandbox_posix.run(plan, ...) ─▶ ScriptRun
                                                   (Windows: sandbox_windows.run)

The script comes over the network and the agent is root, so every run gets, whatever the OS
offers: an unprivileged account without supplementary groups (agent.yaml `detection_user`,
`nobody` by default; the agent's own account when it is not root), rlimits, an allow-listed
environment, stdin from /dev/null, a fresh scratch folder as working directory and HOME
(removed afterwards), capped output, a deadline, a stop request polled while it runs, and a
new session killed as a whole, with the processes that left it through `setsid`.

This module decides how a run is contained before anything is started; starting, reading and
killing the run is agent.sandbox_posix's (agent.sandbox_windows's on Windows). The strongest
layer the device has is chosen automatically and named once in agent.log: bubblewrap on Linux
(no network, read-only root, private /tmp, /dev and /proc, the agent's folders hidden, a PID
namespace whose end kills everything in it), sandbox-exec on macOS (no network, no writes
outside the scratch folder). Without it ("rlimits-only") the agent makes itself a child
subreaper on Linux, so an orphan that left the session is reparented to the agent and swept
with the rest. macOS has no subreaper: there an orphan that called setsid escapes the sweep,
though sandbox-exec still keeps it off the network and the disk.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent import logs
from agent.errors import DetectionError

log = logging.getLogger(logs.LOGGER)

SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_ACCOUNT = "nobody"
DEFAULT_OUTPUT_CAP = 64 * 1024
SANDBOX_EXEC = "/usr/bin/sandbox-exec"
_SANE_LANG = re.compile(r"(C|POSIX|[a-z]{2,3}(_[A-Z]{2})?)(\.[A-Za-z0-9-]{1,20})?(@[a-z]{1,20})?")
# bubblewrap's private /tmp: not a temporary file of ours, and it hides what is below it.
_PRIVATE_TMP = Path("/tmp")  # noqa: S108


class Isolation(StrEnum):
    """The layer that keeps a script off the network and the disk, as detection.log names it."""

    BUBBLEWRAP = "bubblewrap"
    SANDBOX_EXEC = "sandbox-exec"
    JOB_OBJECT = "job-object"
    RLIMITS_ONLY = "rlimits-only"


@dataclass(frozen=True)
class Account:
    """Who a script runs as; `switch` is False when the agent is not root and runs it as itself."""

    name: str
    uid: int
    gid: int
    switch: bool


def resolve_account(name: str, *, euid: int | None = None) -> Account:
    """The account to run scripts as: `name` when the agent is root, else the agent's own."""
    import pwd  # POSIX only, and this module is imported on Windows too

    euid = os.geteuid() if euid is None else euid
    if euid != 0:  # only root can switch; running as ourselves is still far from root
        with contextlib.suppress(KeyError):
            return Account(pwd.getpwuid(euid).pw_name, euid, os.getegid(), switch=False)
        return Account(str(euid), euid, os.getegid(), switch=False)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        problem = "does not exist on this device"
    else:
        if entry.pw_uid != 0 and entry.pw_gid != 0:
            return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)
        problem = "is privileged (uid or gid 0), not an unprivileged account"
    raise DetectionError(
        "account_unusable",
        f"the detection account {name!r} (agent.yaml detection_user) {problem}; "
        "the detection script was not run",
    )


def popen_identity(account: Account) -> dict[str, Any]:
    """Popen arguments that drop to the account in the child: setgroups([]), setgid, setuid."""
    return {"user": account.uid, "group": account.gid, "extra_groups": []} if account.switch else {}


@dataclass(frozen=True)
class Limits:
    """The rlimits of one run; `processes` counts every process of the account (RLIMIT_NPROC)."""

    cpu_s: int
    address_space: int = 1024**3
    file_size: int = 16 * 1024**2
    open_files: int = 256
    processes: int = 64

    @classmethod
    def for_run(cls, timeout_s: float, account_processes: int) -> Limits:
        # RLIMIT_NPROC counts per real uid over the whole machine (user namespaces included),
        # and `nobody` is shared with other services: allow 64 on top of what the account
        # already runs, so a busy `nobody` cannot starve the script and a fork bomb still
        # stops at 64 more. The CPU limit backs the deadline up should the agent be stuck.
        return cls(cpu_s=math.ceil(timeout_s) + 5, processes=account_processes + 64)

    def rlimits(self, platform: str = sys.platform) -> list[tuple[str, int, int]]:
        """(resource name, soft, hard) to set in the child before it executes anything."""
        pairs = [
            ("RLIMIT_CPU", self.cpu_s, self.cpu_s + 1),  # SIGXCPU, then SIGKILL if caught
            ("RLIMIT_FSIZE", self.file_size, self.file_size),
            ("RLIMIT_NOFILE", self.open_files, self.open_files),
            ("RLIMIT_NPROC", self.processes, self.processes),
            ("RLIMIT_CORE", 0, 0),  # no core of a root-started script left lying around
        ]
        if platform != "darwin":  # macOS accepts RLIMIT_AS but does not enforce it
            pairs.append(("RLIMIT_AS", self.address_space, self.address_space))
        return pairs


def environment(scratch: str, agent_lang: str | None) -> dict[str, str]:
    """The script's whole environment: nothing of the agent's (its token, its proxy password)."""
    lang = agent_lang or ""
    return {
        "PATH": SCRIPT_PATH,
        "LANG": lang if _SANE_LANG.fullmatch(lang) else "C.UTF-8",
        "HOME": scratch,
        "TMPDIR": scratch,
    }


def bwrap_command(
    bwrap: str, argv: Sequence[str], *, scratch: str, hidden: Sequence[str], env: Mapping[str, str]
) -> list[str]:
    """bubblewrap around `argv`, to be started as the account, never as root.

    Started by root with --uid, bwrap maps the sandbox's uid to root outside, and every file
    root owns would be the script's own. Started as the account, bwrap (not setuid) makes an
    unprivileged user namespace in which the account stays itself.
    """
    command = [*_bwrap_base(bwrap)]
    for folder in hidden:  # an empty read-only folder over the agent's conf, state, log, run
        command += ["--tmpfs", folder, "--remount-ro", folder]
    command += ["--bind", scratch, scratch, "--chdir", scratch, "--clearenv"]
    for key, value in env.items():
        command += ["--setenv", key, value]
    return [*command, "--", *argv]


def _bwrap_base(bwrap: str) -> list[str]:
    return [
        bwrap,
        # user, pid, network, ipc, uts, cgroup: a loopback of its own and nothing else, and a
        # PID namespace whose first process's end kills everything left in it
        "--unshare-all",
        "--die-with-parent",  # the agent dies, the sandbox dies
        "--new-session",  # no TIOCSTI into a terminal the agent may have
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",  # its own processes only: not the agent's environ
        "--tmpfs", str(_PRIVATE_TMP),
    ]  # fmt: skip


def sandbox_exec_profile(hidden_count: int) -> str:
    """The macOS profile; paths come in as -D parameters, so none needs quoting in it."""
    rules = [
        "(version 1)",
        "(allow default)",
        "(deny network*)",
        "(deny file-write*)",
        '(allow file-write* (subpath (param "SCRATCH")) (literal "/dev/null"))',
    ]
    rules += [f'(deny file-read* (subpath (param "HIDDEN_{i}")))' for i in range(hidden_count)]
    return "\n".join(rules) + "\n"


def sandbox_exec_command(
    sandbox_exec: str, argv: Sequence[str], *, scratch: str, hidden: Sequence[str]
) -> list[str]:
    """sandbox-exec around `argv`; its rules match real paths (/tmp is /private/tmp)."""
    command = [sandbox_exec, "-p", sandbox_exec_profile(len(hidden))]
    command += ["-D", f"SCRATCH={os.path.realpath(scratch)}"]
    for index, folder in enumerate(hidden):
        command += ["-D", f"HIDDEN_{index}={os.path.realpath(folder)}"]
    return [*command, *argv]


def hideable(folder: str, account: Account) -> bool:
    """Whether to cover an agent folder: it exists, is outside /tmp (private anyway), and the
    account can reach it (bwrap mounts as the account; what it cannot reach it cannot read)."""
    path = Path(folder)
    if not path.is_dir() or path == _PRIVATE_TMP or _PRIVATE_TMP in path.parents:
        return False
    for parent in path.parents:
        try:
            info = parent.stat()
        except OSError:
            return False
        owner, group = info.st_uid == account.uid, info.st_gid == account.gid
        bit = stat.S_IXUSR if owner else stat.S_IXGRP if group else stat.S_IXOTH
        if not info.st_mode & bit and account.uid != 0:
            return False
    return True


def _find_bwrap() -> str | None:
    return shutil.which("bwrap", path=SCRIPT_PATH) if sys.platform == "linux" else None


def _find_sandbox_exec() -> str | None:
    return SANDBOX_EXEC if sys.platform == "darwin" and os.path.exists(SANDBOX_EXEC) else None


@dataclass(frozen=True)
class SandboxSettings:
    """What the agent asks of the sandbox; `bwrap`/`sandbox_exec` None means not installed."""

    account: str = DEFAULT_ACCOUNT
    require_strong: bool = False
    hidden: tuple[str, ...] = ()  # the agent's own folders
    output_cap: int = DEFAULT_OUTPUT_CAP
    bwrap: str | None = field(default_factory=_find_bwrap)
    sandbox_exec: str | None = field(default_factory=_find_sandbox_exec)


@dataclass(frozen=True)
class Plan:
    """How the next run will be contained, decided before anything is started."""

    account: Account
    isolation: Isolation
    settings: SandboxSettings


@dataclass(frozen=True)
class ScriptRun:
    """What one run did. A negative exit code is the killing signal (bubblewrap: 128+signal).

    `stopped_for` is set when the sandbox ended the run: "timeout", "too_much_output" (on
    `stream`) or "stop_requested"; the output is then what came before, at most the cap.
    """

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float
    stopped_for: str | None = None
    stream: str = ""


_bwrap_problems: dict[tuple[str, int], str] = {}
_announced: set[str] = set()


def plan(settings: SandboxSettings, *, platform: str = sys.platform) -> Plan:
    """The account and the strongest isolation available; `sandbox_unavailable` if required."""
    if platform == "win32":
        return Plan(Account("restricted-token", -1, -1, True), Isolation.JOB_OBJECT, settings)
    account = resolve_account(settings.account)
    isolation, missing = _strongest(settings, account, platform)
    if missing and settings.require_strong:
        raise DetectionError(
            "sandbox_unavailable",
            f"the policy requires a strong sandbox (require_strong_sandbox) and {missing}; "
            "the detection script was not run",
        )
    # Said once per agent process (and again should it change), not at every detection.
    who = (
        f"the unprivileged account {account.name}"
        if account.switch
        else f"the agent's own account {account.name} (the agent is not root)"
    )
    line = (
        f"{missing}: detection runs with rlimits and {who} only"
        if missing
        else f"detection sandbox: {isolation.value}, scripts run as {who}"
    )
    if line not in _announced:
        _announced.add(line)
        log.log(logging.WARNING if missing else logging.INFO, "%s", line)
    return Plan(account, isolation, settings)


def _strongest(settings: SandboxSettings, account: Account, platform: str) -> tuple[Isolation, str]:
    """The strongest layer here and, when there is none, why not (for the log and the error)."""
    if platform == "darwin":
        if settings.sandbox_exec is not None:
            return Isolation.SANDBOX_EXEC, ""
        return Isolation.RLIMITS_ONLY, f"sandbox-exec not found ({SANDBOX_EXEC})"
    if platform != "linux":
        return Isolation.RLIMITS_ONLY, f"no strong sandbox is known for {platform}"
    if settings.bwrap is None:
        return Isolation.RLIMITS_ONLY, "bubblewrap not found (Debian/Ubuntu package bubblewrap)"
    problem = _probe_bwrap(settings.bwrap, account)
    if problem:
        return Isolation.RLIMITS_ONLY, f"bubblewrap cannot make its sandbox here ({problem})"
    return Isolation.BUBBLEWRAP, ""


def _probe_bwrap(bwrap: str, account: Account) -> str:
    """Why bwrap cannot sandbox as `account` here, "" when it can; tried once per process.

    Started unprivileged, bwrap needs user namespaces, which a kernel or a container may
    forbid; its failure would look like the script's own exit code 1, so try it on sh first.
    """
    key = (bwrap, account.uid)
    if key not in _bwrap_problems:
        probe = [*_bwrap_base(bwrap), "--clearenv", "--", "/bin/sh", "-c", "exit 0"]
        try:
            done = subprocess.run(
                probe,
                capture_output=True,
                check=False,
                env={},
                timeout=10,
                cwd="/",
                **popen_identity(account),
            )
            said = done.stderr.decode("utf-8", "replace").strip().splitlines() or [""]
            _bwrap_problems[key] = "" if done.returncode == 0 else said[-1][:200] or "it failed"
        except (OSError, subprocess.SubprocessError) as exc:
            _bwrap_problems[key] = str(exc)[:200]
    return _bwrap_problems[key]


__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_OUTPUT_CAP",
    "SCRIPT_PATH",
    "Account",
    "Isolation",
    "Limits",
    "Plan",
    "SandboxSettings",
    "ScriptRun",
    "bwrap_command",
    "environment",
    "hideable",
    "plan",
    "popen_identity",
    "resolve_account",
    "sandbox_exec_command",
    "sandbox_exec_profile",
]
