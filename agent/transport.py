"""The agent's only door to the network, and the only module that imports httpx.

- TLS: with `SSL_WHITELIST`, a certificate is accepted if and only if its SHA-1 or SHA-256
  fingerprint is pinned, checked inside the handshake, before a byte of the request (which
  carries the token) is sent; without it, normal CA verification.
- Every call has a timeout.
- Outcomes become typed errors once, here: TransientError (try again later: connection
  refused or reset, timeout, 5xx, 429; Retry-After kept) or PermanentError (the authority
  said no: unknown token, deactivated organization, refused input), each with a sentence a
  support person understands.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ssl
from collections.abc import Iterable
from typing import Any

import httpx

from agent.errors import PermanentError, TransientError
from agent.pinning import PinMismatch, pinned_context

TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504}


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())


def _tls_failure(exc: BaseException) -> PermanentError | None:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, PinMismatch):
            return PermanentError("tls_pin_mismatch", str(cause.args[0] if cause.args else cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return PermanentError(
                "tls_verify_failed",
                f"the server's certificate is not trusted ({cause.verify_message}); "
                "a self-signed server needs SSL_WHITELIST",
            )
        cause = cause.__cause__ or cause.__context__
    if "SSL_WHITELIST" in str(exc):
        return PermanentError("tls_pin_mismatch", str(exc))
    return None


def _error_from_response(response: httpx.Response) -> PermanentError | TransientError:
    code, message = "http_error", f"the authority answered HTTP {response.status_code}"
    try:
        body = response.json()
        code = str(body["error"]["code"])
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        pass
    if response.status_code in TRANSIENT_STATUSES or response.status_code >= 500:
        retry = retry_after_seconds(response.headers.get("Retry-After"))
        return TransientError(code, f"{message} (HTTP {response.status_code})", retry)
    return PermanentError(code, message)


class AuthorityClient:
    """Calls to the authority's agent API over one kept-alive connection pool."""

    def __init__(
        self,
        url: str,
        *,
        pins: Iterable[str] = (),
        proxy: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        pin_list = list(pins)
        # Without pins: the operating system's trust store (where an organization installs
        # its internal CA), not a bundle shipped with a library.
        verify = pinned_context(pin_list) if pin_list else ssl.create_default_context()
        self.url = url
        self._client = httpx.Client(
            base_url=url,
            verify=verify,
            proxy=proxy,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            trust_env=False,  # the installer arguments say which proxy; not the environment
            headers={"User-Agent": "holdfast-agent"},
        )

    def __enter__(self) -> AuthorityClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        """POST JSON; the decoded JSON answer, or a typed error."""
        try:
            response = self._client.post(path, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientError(
                "timeout", f"the authority at {self.url} did not answer in time"
            ) from exc
        except httpx.TransportError as exc:
            tls = _tls_failure(exc)
            if tls is not None:
                raise tls from exc
            raise TransientError(
                "connect_failed", f"cannot reach the authority at {self.url}: {_short(exc)}"
            ) from exc
        if response.is_success:
            try:
                answer = response.json()
            except ValueError as exc:
                raise TransientError("bad_answer", "the authority's answer was not JSON") from exc
            if not isinstance(answer, dict):
                raise TransientError("bad_answer", "the authority's answer was not a JSON object")
            return answer
        raise _error_from_response(response)

    def fetch_policy(self, token: str, report: dict[str, Any]) -> dict[str, Any]:
        return self.post("/api/v1/deploy/policy", report, {"X-Deployment-Token": token})

    def register(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.post("/api/v1/deploy/register", body, {"X-Deployment-Token": token})

    def sign_in(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        """Manual registration: `body` carries the user's password, which goes nowhere else."""
        return self.post("/api/v1/deploy/sign-in", body, {"X-Deployment-Token": token})

    def device_policy(self, credential: str, report: dict[str, Any]) -> dict[str, Any]:
        return self.post("/api/v1/device/policy", report, {"Authorization": f"Bearer {credential}"})


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = ["AuthorityClient", "retry_after_seconds"]
