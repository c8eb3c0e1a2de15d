"""The detection script's sandbox on Windows: a job object and a restricted token.

Written for Windows and not run on Linux CI; what is portable (the command line, the job's
limits, the environment) is unit-tested on every OS.

- `.ps1` runs as `powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass
  -File <path>` and `.bat`/`.cmd` as `cmd.exe /d /q /c <path>`, whatever interpreter the
  policy names: no profile, no AutoRun command and no prompt can change or stall a run.
- A job object with kill-on-close: closing the agent's handle, or the agent dying, ends every
  process of the script, children included; it also caps the number of processes, the memory
  of the whole job and each process's CPU time, and a crash ends the process instead of
  waiting on an error-reporting dialog nobody will see.
- A restricted token made from the agent's own (SYSTEM's): every privilege removed,
  Administrators deny-only, and restricting SIDs (Users, Everyone, Authenticated Users,
  RESTRICTED), so the script gets only what an ordinary user could read; the scratch folder is
  granted to RESTRICTED so it can write there.
"""

from __future__ import annotations

import ntpath
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.errors import DetectionError
from agent.sandbox import Limits, Plan, ScriptRun

POWERSHELL = (
    "powershell.exe",
    "-NoLogo",
    "-NoProfile",
    "-NonInteractive",
    "-ExecutionPolicy",
    "Bypass",
    "-File",
)
CMD = ("cmd.exe", "/d", "/q", "/c")  # /d: no AutoRun from the registry; /q: no echo

JOB_OBJECT_LIMIT_PROCESS_TIME = 0x00000002
JOB_OBJECT_LIMIT_ACTIVE_PROCESS = 0x00000008
JOB_OBJECT_LIMIT_JOB_MEMORY = 0x00000200
JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION = 0x00000400
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
_HUNDRED_NS_PER_S = 10_000_000
# Users, Everyone, Authenticated Users, RESTRICTED: access is granted only where one of these
# is granted it too, so SYSTEM's own files and keys stay out of reach.
RESTRICTING_SIDS = ("S-1-5-32-545", "S-1-1-0", "S-1-5-11", "S-1-5-12")
ADMINISTRATORS_SID = "S-1-5-32-544"
RESTRICTED_SID = "S-1-5-12"


def command(interpreter: Sequence[str], path: str) -> list[str]:
    """The argv for the script at `path`: fixed for .ps1 and .bat/.cmd, else the policy's."""
    suffix = ntpath.splitext(path)[1].lower()
    if suffix == ".ps1":
        return [*POWERSHELL, path]
    if suffix in (".bat", ".cmd"):
        return [*CMD, path]
    return [*interpreter, path]


def command_line(argv: Sequence[str]) -> str:
    """The one string CreateProcess takes, quoted as the C runtime will split it again."""
    return subprocess.list2cmdline(list(argv))


@dataclass(frozen=True)
class JobLimits:
    """The values of the job's JOBOBJECT_EXTENDED_LIMIT_INFORMATION."""

    flags: int
    active_processes: int
    job_memory: int
    process_user_time_100ns: int


def job_limits(limits: Limits) -> JobLimits:
    """The job's limits for one run; unlike RLIMIT_NPROC a job counts only its own processes."""
    return JobLimits(
        flags=JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        | JOB_OBJECT_LIMIT_ACTIVE_PROCESS
        | JOB_OBJECT_LIMIT_JOB_MEMORY
        | JOB_OBJECT_LIMIT_PROCESS_TIME
        | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION,
        active_processes=limits.processes,
        job_memory=limits.address_space,
        process_user_time_100ns=limits.cpu_s * _HUNDRED_NS_PER_S,
    )


def environment(scratch: str, system_root: str) -> dict[str, str]:
    """The script's whole environment: what cmd and PowerShell need, nothing of the agent's."""
    system32 = ntpath.join(system_root, "System32")
    return {
        "PATH": ";".join(
            [
                system32,
                system_root,
                ntpath.join(system32, "Wbem"),
                ntpath.join(system32, "WindowsPowerShell", "v1.0"),
            ]
        ),
        "PATHEXT": ".COM;.EXE;.BAT;.CMD;.PS1",
        "SystemRoot": system_root,
        "windir": system_root,
        "ComSpec": ntpath.join(system32, "cmd.exe"),
        "TEMP": scratch,
        "TMP": scratch,
        "USERPROFILE": scratch,
        "HOME": scratch,
    }


def environment_block(env: Mapping[str, str]) -> str:
    """CreateProcess's environment: NUL-separated, sorted case-insensitively, NUL-terminated."""
    return "".join(f"{k}={v}\0" for k, v in sorted(env.items(), key=lambda i: i[0].upper())) + "\0"


if sys.platform == "win32":
    import ctypes
    import msvcrt
    import os
    import threading
    from ctypes import wintypes

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)

    _JOB_EXTENDED_LIMIT_INFORMATION = 9
    _CREATE_SUSPENDED = 0x00000004
    _CREATE_UNICODE_ENVIRONMENT = 0x00000400
    _CREATE_NO_WINDOW = 0x08000000
    _STARTF_USESTDHANDLES = 0x00000100
    _DISABLE_MAX_PRIVILEGE = 0x1
    _LUA_TOKEN = 0x4
    _TOKEN_ACCESS = 0x0001 | 0x0002 | 0x0008 | 0x0080 | 0x0100  # assign, duplicate, query, ...
    _WAIT_OBJECT_0 = 0

    class _IoCounters(ctypes.Structure):
        _fields_ = [(name, ctypes.c_ulonglong) for name in ("r", "w", "o", "rb", "wb", "ob")]

    class _BasicLimits(ctypes.Structure):
        _fields_ = [
            ("PerProcessUserTimeLimit", ctypes.c_int64),
            ("PerJobUserTimeLimit", ctypes.c_int64),
            ("LimitFlags", wintypes.DWORD),
            ("MinimumWorkingSetSize", ctypes.c_size_t),
            ("MaximumWorkingSetSize", ctypes.c_size_t),
            ("ActiveProcessLimit", wintypes.DWORD),
            ("Affinity", ctypes.c_size_t),
            ("PriorityClass", wintypes.DWORD),
            ("SchedulingClass", wintypes.DWORD),
        ]

    class _ExtendedLimits(ctypes.Structure):
        _fields_ = [
            ("BasicLimitInformation", _BasicLimits),
            ("IoInfo", _IoCounters),
            ("ProcessMemoryLimit", ctypes.c_size_t),
            ("JobMemoryLimit", ctypes.c_size_t),
            ("PeakProcessMemoryUsed", ctypes.c_size_t),
            ("PeakJobMemoryUsed", ctypes.c_size_t),
        ]

    class _StartupInfo(ctypes.Structure):
        _fields_ = [
            ("cb", wintypes.DWORD),
            ("lpReserved", wintypes.LPWSTR),
            ("lpDesktop", wintypes.LPWSTR),
            ("lpTitle", wintypes.LPWSTR),
            *[(name, wintypes.DWORD) for name in ("x", "y", "xs", "ys", "xc", "yc", "fill")],
            ("dwFlags", wintypes.DWORD),
            ("wShowWindow", wintypes.WORD),
            ("cbReserved2", wintypes.WORD),
            ("lpReserved2", ctypes.c_void_p),
            ("hStdInput", wintypes.HANDLE),
            ("hStdOutput", wintypes.HANDLE),
            ("hStdError", wintypes.HANDLE),
        ]

    class _ProcessInformation(ctypes.Structure):
        _fields_ = [
            ("hProcess", wintypes.HANDLE),
            ("hThread", wintypes.HANDLE),
            ("dwProcessId", wintypes.DWORD),
            ("dwThreadId", wintypes.DWORD),
        ]

    class _SidAndAttributes(ctypes.Structure):
        _fields_ = [("Sid", ctypes.c_void_p), ("Attributes", wintypes.DWORD)]

    def _ok(result: int, what: str) -> None:
        if not result:
            raise OSError(ctypes.get_last_error(), f"{what} failed")

    def _sids(texts: Sequence[str]) -> ctypes.Array[_SidAndAttributes]:
        array = (_SidAndAttributes * len(texts))()
        for index, text in enumerate(texts):
            sid = ctypes.c_void_p()
            _ok(_advapi32.ConvertStringSidToSidW(text, ctypes.byref(sid)), "ConvertStringSidToSid")
            array[index].Sid = sid
        return array

    def _restricted_token() -> wintypes.HANDLE:
        own, restricted = wintypes.HANDLE(), wintypes.HANDLE()
        process = _kernel32.GetCurrentProcess()
        _ok(_advapi32.OpenProcessToken(process, _TOKEN_ACCESS, ctypes.byref(own)), "OpenToken")
        disabled, restricting = _sids([ADMINISTRATORS_SID]), _sids(RESTRICTING_SIDS)
        _ok(
            _advapi32.CreateRestrictedToken(
                own,
                _DISABLE_MAX_PRIVILEGE | _LUA_TOKEN,
                len(disabled),
                disabled,
                0,
                None,
                len(restricting),
                restricting,
                ctypes.byref(restricted),
            ),
            "CreateRestrictedToken",
        )
        _kernel32.CloseHandle(own)
        return restricted

    def _job(limits: JobLimits) -> wintypes.HANDLE:
        job = _kernel32.CreateJobObjectW(None, None)
        _ok(job, "CreateJobObject")
        info = _ExtendedLimits()
        info.BasicLimitInformation.LimitFlags = limits.flags
        info.BasicLimitInformation.ActiveProcessLimit = limits.active_processes
        info.BasicLimitInformation.PerProcessUserTimeLimit = limits.process_user_time_100ns
        info.JobMemoryLimit = limits.job_memory
        _ok(
            _kernel32.SetInformationJobObject(
                job, _JOB_EXTENDED_LIMIT_INFORMATION, ctypes.byref(info), ctypes.sizeof(info)
            ),
            "SetInformationJobObject",
        )
        return wintypes.HANDLE(job)

    def _reader(fd: int, buffer: bytearray, cap: int, overflow: threading.Event) -> None:
        # Windows pipes cannot be select()ed: one thread per stream, stopping at the cap.
        with open(fd, "rb", buffering=0) as stream:
            while chunk := stream.read(65536):
                buffer += chunk
                if len(buffer) > cap:
                    del buffer[cap:]
                    overflow.set()
                    return

    def _spawn(
        argv: Sequence[str], scratch: str, job: wintypes.HANDLE
    ) -> tuple[_ProcessInformation, int, int]:
        """Start `argv` suspended under a restricted token, put it in `job`, then resume it."""
        system_root = os.environ.get("SYSTEMROOT", r"C:\Windows")
        token = _restricted_token()
        (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
        null = os.open("NUL", os.O_RDONLY)
        handles = [msvcrt.get_osfhandle(fd) for fd in (null, out_w, err_w)]
        for handle in handles:
            os.set_handle_inheritable(handle, True)
        info = _StartupInfo(cb=ctypes.sizeof(_StartupInfo), dwFlags=_STARTF_USESTDHANDLES)
        info.hStdInput, info.hStdOutput, info.hStdError = handles
        process = _ProcessInformation()
        try:
            _ok(
                _advapi32.CreateProcessAsUserW(
                    token,
                    None,
                    ctypes.create_unicode_buffer(command_line(argv)),
                    None,
                    None,
                    True,
                    _CREATE_SUSPENDED | _CREATE_UNICODE_ENVIRONMENT | _CREATE_NO_WINDOW,
                    environment_block(environment(scratch, system_root)),
                    scratch,
                    ctypes.byref(info),
                    ctypes.byref(process),
                ),
                "CreateProcessAsUser",
            )
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            raise DetectionError(
                "start_failed", f"the detection script could not be started ({exc})"
            ) from exc
        finally:
            _kernel32.CloseHandle(token)
            for fd in (null, out_w, err_w):
                os.close(fd)
        # Suspended until it is in the job, so not even its first child escapes the job.
        _ok(_kernel32.AssignProcessToJobObject(job, process.hProcess), "AssignProcessToJob")
        _kernel32.ResumeThread(process.hThread)
        return process, out_r, err_r

    def _wait(
        process: _ProcessInformation,
        deadline: float,
        overflow: threading.Event,
        should_stop: Callable[[], bool] | None,
    ) -> str | None:
        while _kernel32.WaitForSingleObject(process.hProcess, 50) != _WAIT_OBJECT_0:
            if time.monotonic() >= deadline:
                return "timeout"
            if overflow.is_set():
                return "too_much_output"
            if should_stop is not None and should_stop():
                return "stop_requested"
        return "too_much_output" if overflow.is_set() else None

    def run(
        chosen: Plan,
        argv: Sequence[str],
        scratch: str,
        timeout_s: float,
        should_stop: Callable[[], bool] | None,
    ) -> ScriptRun:
        """Run `argv` in a job under a restricted token; the job dies with its handle."""
        started = time.monotonic()
        cap = chosen.settings.output_cap
        # The restricted token passes only where RESTRICTED is granted too: grant the scratch.
        granted = subprocess.run(
            ["icacls", scratch, "/grant", f"*{RESTRICTED_SID}:(OI)(CI)M"],
            capture_output=True,
            check=False,
        )
        if granted.returncode != 0:
            # A DetectionError, not CalledProcessError: the daemon turns it into a failed
            # attempt instead of losing its loop.
            raise DetectionError(
                "start_failed",
                f"could not open the scratch folder to the restricted token (icacls exit "
                f"{granted.returncode})",
            )
        job = _job(job_limits(Limits.for_run(timeout_s, 0)))
        try:
            process, out_r, err_r = _spawn(command(argv[:-1], argv[-1]), scratch, job)
        except BaseException:
            _kernel32.CloseHandle(job)  # kill-on-close: nothing of the run survives
            raise
        buffers, overflow = (bytearray(), bytearray()), threading.Event()
        readers = [
            threading.Thread(target=_reader, args=(fd, buf, cap, overflow), daemon=True)
            for fd, buf in zip((out_r, err_r), buffers, strict=True)
        ]
        for reader in readers:
            reader.start()
        stopped_for = _wait(process, started + timeout_s, overflow, should_stop)
        # Whatever the script left running goes with the job; then the pipes close.
        _kernel32.TerminateJobObject(job, 1)
        _kernel32.WaitForSingleObject(process.hProcess, 5000)
        code = wintypes.DWORD()
        _kernel32.GetExitCodeProcess(process.hProcess, ctypes.byref(code))
        for handle in (process.hThread, process.hProcess, job):
            _kernel32.CloseHandle(handle)
        for reader in readers:
            reader.join(timeout=2)
        return ScriptRun(
            exit_code=code.value,
            stdout=bytes(buffers[0]).decode("utf-8", errors="replace"),
            stderr=bytes(buffers[1]).decode("utf-8", errors="replace"),
            duration_s=time.monotonic() - started,
            stopped_for=stopped_for,
            stream="stdout" if len(buffers[0]) >= cap else "stderr",
        )

else:

    def run(
        chosen: Plan,
        argv: Sequence[str],
        scratch: str,
        timeout_s: float,
        should_stop: Callable[[], bool] | None,
    ) -> ScriptRun:
        """Job objects exist only on Windows."""
        raise DetectionError(
            "sandbox_unavailable", "a job object sandbox was requested on a system without them"
        )


__all__ = [
    "CMD",
    "POWERSHELL",
    "JobLimits",
    "command",
    "command_line",
    "environment",
    "environment_block",
    "job_limits",
    "run",
]
