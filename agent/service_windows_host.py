"""The Windows service host: what runs when the SCM starts HoldfastService (`holdfast service`).

A process the SCM starts must connect to it within 30 seconds (StartServiceCtrlDispatcher)
and report SERVICE_RUNNING, or the SCM kills it with error 1053; and it must turn the SCM's
stop request into the clean stop SIGTERM gives elsewhere. pywin32's ServiceFramework does the
talking; `HoldfastService` runs the daemon in the service thread and stops it on request:

    SCM starts `"<exe>" service` ─▶ main() ─▶ StartServiceCtrlDispatcher (returns at the end)
        ─▶ service thread: SvcRun reports SERVICE_RUNNING ─▶ SvcDoRun: Daemon.run()
    SCM stop ─▶ SvcStop: SERVICE_STOP_PENDING ─▶ request_stop: the daemon's loop ends
        ─▶ SvcDoRun returns ─▶ pywin32 reports SERVICE_STOPPED
    the daemon fails (an exception, an exit code other than 0) ─▶ SvcDoRun raises
        ─▶ pywin32 reports SERVICE_STOPPED with an error ─▶ the SCM's recovery restarts it

`holdfast run` stays the agent in a console; `holdfast service` is only for the SCM (the
service's binPath, agent.service_windows.service_binary_path) and says so when run by hand.
pywin32 is imported only on Windows: this module imports anywhere, so its tests run on
Linux, and there `main()` says that it needs Windows.
"""

from __future__ import annotations

import importlib.util
import sys

from agent.daemon import Daemon
from agent.errors import AgentError, UsageError
from agent.paths import AgentPaths
from agent.service_windows import DESCRIPTION, DISPLAY_NAME, SERVICE, SERVICE_COMMAND

NEEDS_WINDOWS = (
    f"`holdfast {SERVICE_COMMAND}` is the Windows service host, for the Windows service "
    "manager to start; it needs Windows. Here `holdfast install` sets up the service and "
    "`holdfast run` runs the agent in the foreground."
)
NOT_FROM_THE_SCM = (
    f"`holdfast {SERVICE_COMMAND}` is started by the Windows service manager, not by hand: "
    f"`holdfast install` registers {SERVICE}, `sc.exe start {SERVICE}` starts it, and "
    "`holdfast run` runs the agent in this console instead."
)
NO_PYWIN32 = (
    "this build of holdfast lacks pywin32, which the Windows service needs; reinstall holdfast"
)
# How long the SCM is told a stop may take: the daemon stops its current step, as on SIGTERM.
STOP_WAIT_HINT_MS = 30_000
# ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: the process was not started by the SCM.
_NOT_STARTED_BY_THE_SCM = 1063

# A build for Windows without pywin32 still imports this module, and main() says so.
_PYWIN32 = sys.platform == "win32" and importlib.util.find_spec("win32serviceutil") is not None


def request_stop(daemon: Daemon) -> None:
    """Ask `daemon` to stop, from any thread, before or while it runs: what SIGTERM does."""
    daemon.request_stop()


def run_daemon(daemon: Daemon) -> None:
    """Run `daemon` in this thread until it stops; AgentError when it stopped with a failure.

    Raised, so that pywin32 reports the stop to the SCM as a failure and its recovery actions
    (restart after 30 s, `sc.exe failureflag 1`) apply, as systemd's Restart=on-failure does.
    """
    code = daemon.run()
    if code != 0:
        raise AgentError(f"the Holdfast agent stopped with exit code {code}")


def main(paths: AgentPaths) -> int:
    """`holdfast service`: hand this process to the SCM, which runs HoldfastService in it."""
    if sys.platform == "win32":  # mypy, on Linux, checks none of this branch
        if not _PYWIN32:
            raise AgentError(NO_PYWIN32)
        return _dispatch(paths)
    raise UsageError(NEEDS_WINDOWS)


# Each name below exists on Windows only; mypy (on Linux) skips this block.
if sys.platform == "win32" and _PYWIN32:
    import pywintypes
    import servicemanager
    import win32service
    import win32serviceutil

    class HoldfastService(win32serviceutil.ServiceFramework):
        """HoldfastService as the SCM sees it: the daemon, in the thread the SCM gives it."""

        _svc_name_ = SERVICE
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION
        # Set by main() before the SCM creates the service: where the agent's files are.
        paths: AgentPaths | None = None

        def __init__(self, args: list[str]) -> None:
            super().__init__(args)
            # Made before SvcDoRun, so a stop that comes first still finds it.
            self.daemon = Daemon(self.paths or AgentPaths.system())

        def SvcDoRun(self) -> None:  # pywin32's name
            run_daemon(self.daemon)

        def SvcStop(self) -> None:  # pywin32's name
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
            request_stop(self.daemon)

        # Windows shutting down: the same clean stop, so the state is saved.
        SvcShutdown = SvcStop

    def _dispatch(paths: AgentPaths) -> int:
        HoldfastService.paths = paths
        servicemanager.Initialize()
        servicemanager.PrepareToHostSingle(HoldfastService)
        try:
            # Returns once the service has stopped.
            servicemanager.StartServiceCtrlDispatcher()
        except pywintypes.error as exc:
            if exc.winerror == _NOT_STARTED_BY_THE_SCM:
                raise UsageError(NOT_FROM_THE_SCM) from None
            raise AgentError(f"could not connect to the service manager: {exc.strerror}") from exc
        return 0


__all__ = ["NEEDS_WINDOWS", "NOT_FROM_THE_SCM", "main", "request_stop", "run_daemon"]
