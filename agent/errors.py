"""The agent's error hierarchy.

    AgentError                     exit 1
    ├── UsageError                 exit 2   bad command line, bad installer argument, bad agent.yaml
    │   └── DeployArgsError        exit 2   names the installer argument (`key`) that was wrong
    ├── DaemonUnavailable          exit 3   the command needs the daemon and it is not running
    ├── Refused                    exit 4   not permitted
    ├── DetectionError                      the detection script could not tell the user
    ├── BackupError                         a backup or restore stopped: local state, no key...
    │   ├── BackupCancelled                 asked to stop; nothing committed, the next run resumes
    │   ├── BlobCorrupt                     a stored blob failed authentication or decoding
    │   └── EntryRefused                    a restore entry would leave `--to` or meets a conflict
    │       └── EntryExists                 something is already there and --overwrite is off
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


class BackupError(AgentError):
    """A backup or restore cannot go on: the message says what stopped it.

    Errors on one source file are not BackupErrors (they are warnings of a partial run);
    the authority's refusals and outages stay ContactErrors, so the lifecycle decides.
    """


class BackupCancelled(BackupError):
    """A run was asked to stop; nothing was committed, the next run resumes."""

    def __init__(self, message: str = "the backup was stopped; the next run resumes it") -> None:
        super().__init__(message)


class BlobCorrupt(BackupError):
    """A blob from the authority is not what was stored under `chunk_id`."""

    def __init__(self, chunk_id: str, problem: str) -> None:
        super().__init__(f"chunk {chunk_id[:16]}: {problem}")
        self.chunk_id = chunk_id
        self.problem = problem


class EntryRefused(BackupError):
    """One restore entry was not written: it would land outside the target, or something
    is in its way; the restore goes on with the others."""


class EntryExists(EntryRefused):
    """A restore entry's place is taken and overwriting was not asked for."""


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
    "BackupCancelled",
    "BackupError",
    "BlobCorrupt",
    "ContactError",
    "DaemonUnavailable",
    "DeployArgsError",
    "DetectionError",
    "EntryExists",
    "EntryRefused",
    "PermanentError",
    "Refused",
    "TransientError",
    "UsageError",
]
