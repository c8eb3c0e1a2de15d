"""The authority's error hierarchy, shared by the admin CLI and the HTTP API.

    AuthorityError                 exit 1, HTTP 400
    ├── InvalidInput               exit 2, HTTP 422  bad value from an administrator or an agent
    │   └── NotInitialised         exit 2            data folder without `init`
    ├── NotFound                   exit 2, HTTP 404  unknown organization, policy, user, token
    ├── Conflict                   exit 2, HTTP 409  a second policy, a GUID in another org
    ├── PayloadTooLarge            exit 2, HTTP 413  a pack over the upload limit
    ├── Unauthorized               exit 2, HTTP 401  missing or wrong credential
    ├── Forbidden                  exit 4, HTTP 403  deactivated organization, manual policy
    ├── Gone                       exit 2, HTTP 410  a deleted policy's token
    ├── TooManyAttempts            exit 4, HTTP 429  sign-in locked after failures; Retry-After
    ├── NotImplementedYet          exit 1, HTTP 501  a capability a later release brings
    └── Unavailable                exit 1, HTTP 503  overload, unexpected failure, port in use

Every error carries a stable machine `code` (what agents and scripts branch on) and a
human `message` (what an administrator reads). The CLI maps `exit_code`, the API maps
`status`; neither needs to know the concrete class.
"""

from __future__ import annotations

from typing import ClassVar


class AuthorityError(Exception):
    """Base of every error the authority reports on purpose."""

    status: ClassVar[int] = 400
    exit_code: ClassVar[int] = 1
    default_code: ClassVar[str] = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class InvalidInput(AuthorityError):
    status = 422
    exit_code = 2
    default_code = "invalid_input"


class NotInitialised(InvalidInput):
    default_code = "not_initialised"


class NotFound(AuthorityError):
    status = 404
    exit_code = 2
    default_code = "not_found"


class Conflict(AuthorityError):
    status = 409
    exit_code = 2
    default_code = "conflict"


class PayloadTooLarge(AuthorityError):
    """A request body over its limit; the agent must send smaller packs."""

    status = 413
    exit_code = 2
    default_code = "payload_too_large"


class Unauthorized(AuthorityError):
    status = 401
    exit_code = 2
    default_code = "unauthorized"


class Forbidden(AuthorityError):
    status = 403
    exit_code = 4
    default_code = "forbidden"


class Gone(AuthorityError):
    status = 410
    exit_code = 2
    default_code = "gone"


class TooManyAttempts(AuthorityError):
    """Refused for a while, not for good: `retry_after` seconds, sent as Retry-After."""

    status = 429
    exit_code = 4
    default_code = "too_many_attempts"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class NotImplementedYet(AuthorityError):
    status = 501
    exit_code = 1
    default_code = "not_implemented"


class Unavailable(AuthorityError):
    status = 503
    exit_code = 1
    default_code = "unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 60) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


__all__ = [
    "AuthorityError",
    "Conflict",
    "Forbidden",
    "Gone",
    "InvalidInput",
    "NotFound",
    "NotImplementedYet",
    "NotInitialised",
    "PayloadTooLarge",
    "TooManyAttempts",
    "Unauthorized",
    "Unavailable",
]
