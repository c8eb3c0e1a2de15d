"""The agent's error hierarchy.

    AgentError                     exit 1
    ├── UsageError                 exit 2   bad command line, bad installer argument, bad agent.yaml
    │   └── DeployArgsError        exit 2   names the installer argument (`key`) that was wrong
    ├── DaemonUnavailable          exit 3   the command needs the daemon and it is not running
    ├── Refused                    exit 4   not permitted
    ├── DetectionError                      the detection script could not tell the user
    └── ContactError                        the authority could not be used this time
        ├── TransientError                  try again later: network, timeout, 5xx, 429, busy
        └── PermanentError                  the authority said no: token unknown, deactivated...

A ContactError carries a `code` (the authority's machine code, or one of ours such as
`connect_failed`, `tls_pin_mismatch`), a sentence a support person understands, and for
transient errors the server's Retry-After, a lower bound on the next wait.
"""

from __future__ import annotations

from typing import ClassVar


class AgentError(Exception):
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(AgentError):
    exit_code = 2


class DeployArgsError(UsageError):
    """An installer argument is missing or malformed; nothing was persisted."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"installer argument {key}: {problem}")
        self.key = key


class DaemonUnavailable(AgentError):
    exit_code = 3


class Refused(AgentError):
    exit_code = 4


class DetectionError(AgentError):
    """User detection failed; `code` says how, the message says it to support staff."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ContactError(AgentError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TransientError(ContactError):
    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


class PermanentError(ContactError):
    pass


__all__ = [
    "AgentError",
    "ContactError",
    "DaemonUnavailable",
    "DeployArgsError",
    "DetectionError",
    "PermanentError",
    "Refused",
    "TransientError",
    "UsageError",
]
