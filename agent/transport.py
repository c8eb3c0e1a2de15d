"""The agent's only door to the network, and the only module that imports httpx.

- TLS: with `SSL_WHITELIST`, a certificate is accepted if and only if its SHA-1 or SHA-256
  fingerprint is pinned, checked inside the handshake, before a byte of the request (which
  carries the token) is sent; without it, normal CA verification.
- Every call has a timeout.
- Outcomes become typed errors once, here: TransientError (try again later: connection
  refused or reset, timeout, 5xx, 429; Retry-After kept) or PermanentError (the authority
  said no: unknown token, deactivated organization, refused input), each with a sentence a
  support person understands.
- `probe_server` (for `holdfast doctor`) is the one exception to the pins: it accepts any
  certificate to report its fingerprints, and sends no secret.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from agent.errors import PermanentError, TransientError
from agent.pinning import PinMismatch, pinned_context, recording_context

TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504}
PACK_TIMEOUT = 120.0
# The longest wait a Retry-After may ask for: the longest interval agent.yaml allows. A
# longer one (a typo, a year) would push the next attempt past any date the clock can hold.
MAX_RETRY_AFTER = 7 * 86400.0


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date; at most
    MAX_RETRY_AFTER."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": a time in UTC whose sender does not say where it is
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return min(max(0.0, (when - now).total_seconds()), MAX_RETRY_AFTER)


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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`transport` replaces the network (an in-memory authority); pins and proxy then
        have nothing to apply to."""
        pin_list = list(pins)
        # Without pins: the operating system's trust store (where an organization installs
        # its internal CA), not a bundle shipped with a library.
        verify = pinned_context(pin_list) if pin_list else ssl.create_default_context()
        self.url = url
        # A pack is up to 8 MiB: on a slow uplink one write or the server's fsync of it
        # takes longer than a JSON call may.
        self._pack_timeout = httpx.Timeout(max(timeout, PACK_TIMEOUT), connect=min(timeout, 15.0))
        self._client = httpx.Client(
            base_url=url,
            verify=verify,
            proxy=proxy,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            trust_env=False,  # the installer arguments say which proxy; not the environment
            headers={"User-Agent": "holdfast-agent"},
            transport=transport,
        )

    def __enter__(self) -> AuthorityClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        body: dict[str, Any] | None = None,
        content: bytes | Iterable[bytes] | None = None,
        timeout: httpx.Timeout | None = None,
        absent_ok: bool = False,
    ) -> httpx.Response:
        """One request; a successful response, or a typed error (the only place that maps).

        With `absent_ok`, a 404 about the thing asked for (not an unknown endpoint, which an
        older authority answers) is returned for the caller to say what is absent.
        """
        try:
            response = self._client.request(
                method,
                path,
                json=body,
                content=content,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            raise TransientError(
                "timeout", f"the authority at {self.url} did not answer in time"
            ) from exc
        except httpx.DecodingError as exc:  # a body not in the Content-Encoding it claims
            raise TransientError(
                "bad_answer", f"the authority's answer could not be decoded: {_short(exc)}"
            ) from exc
        except httpx.TransportError as exc:
            tls = _tls_failure(exc)
            if tls is not None:
                raise tls from exc
            raise TransientError(
                "connect_failed", f"cannot reach the authority at {self.url}: {_short(exc)}"
            ) from exc
        # httpx binds a response and its stream to each other, so the pair waits for the
        # cyclic garbage collector, which big bodies do not set off: a restore held dozens
        # of fetched bodies at once (74 responses, 269 MB) and a backup its sent packs (a
        # response keeps its request). Unbound, both go as soon as the caller lets go.
        response.stream = httpx.ByteStream(b"")
        if response.is_success:
            return response
        error = _error_from_response(response)
        if absent_ok and response.status_code == 404 and error.code != "no_such_endpoint":
            return response
        raise error

    def _json(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
        response = self._send(method, path, headers, **kw)
        try:
            return response.json()
        except ValueError as exc:
            raise TransientError("bad_answer", "the authority's answer was not JSON") from exc

    def _object(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> dict[str, Any]:
        answer = self._json(method, path, headers, **kw)
        if not isinstance(answer, dict):
            raise TransientError("bad_answer", "the authority's answer was not a JSON object")
        return answer

    def health(self) -> dict[str, Any]:
        """GET /api/v1/health: no secret is sent, so it tests the connection and TLS trust."""
        return self._object("GET", "/api/v1/health", {})

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        """POST JSON; the decoded JSON answer, or a typed error."""
        return self._object("POST", path, headers, body=body)

    def fetch_policy(self, token: str, report: dict[str, Any]) -> dict[str, Any]:
        return self.post("/api/v1/deploy/policy", report, {"X-Deployment-Token": token})

    def register(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.post("/api/v1/deploy/register", body, {"X-Deployment-Token": token})

    def sign_in(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        """Manual registration: `body` carries the user's password, which goes nowhere else."""
        return self.post("/api/v1/deploy/sign-in", body, {"X-Deployment-Token": token})

    def device_policy(self, credential: str, report: dict[str, Any]) -> dict[str, Any]:
        return self.post("/api/v1/device/policy", report, _bearer(credential))

    # The backup archive (docs/backup-design.md, "Agent API").

    def missing_chunks(self, credential: str, ids: list[str]) -> list[str]:
        """Which of `ids` (at most 10,000) the authority does not hold."""
        answer = self.post("/api/v1/device/chunks/missing", {"ids": ids}, _bearer(credential))
        missing = answer.get("missing")
        if not isinstance(missing, list) or not all(isinstance(i, str) for i in missing):
            raise TransientError("bad_answer", "the authority's missing-chunks answer is malformed")
        return missing

    def put_pack(
        self, credential: str, pack_id: str, body: bytes | Sequence[bytes], index: str
    ) -> int:
        """Store one pack (idempotent); `index` is the X-Holdfast-Pack-Index value.

        `body` may be the pack's blobs in order: they are sent back to back with a
        Content-Length (not chunked), never joined into one more copy of the pack.
        """
        parts = [body] if isinstance(body, bytes) else list(body)
        headers = {
            **_bearer(credential),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(sum(len(part) for part in parts)),
            "X-Holdfast-Pack-Index": index,
        }
        answer = self._object(
            "PUT",
            f"/api/v1/device/packs/{pack_id}",
            headers,
            content=parts,
            timeout=self._pack_timeout,
        )
        stored = answer.get("stored", 0)
        return stored if isinstance(stored, int) else 0

    def get_blob(self, credential: str, chunk_id: str) -> bytes:
        """The stored blob's bytes, still sealed; an absent one is `chunk_not_found`."""
        response = self._send(
            "GET", f"/api/v1/device/chunks/{chunk_id}", _bearer(credential), absent_ok=True
        )
        if response.status_code == 404:
            raise PermanentError(
                "chunk_not_found", f"the authority does not hold chunk {chunk_id[:16]}"
            )
        return response.content

    def get_blobs(self, credential: str, ids: list[str]) -> list[tuple[str, bytes | None]]:
        """Many stored blobs in one request, still sealed, None for one not stored.

        The answer may hold only the first ones (the authority bounds its size); the
        caller asks again for the rest. An authority older than this call answers
        `no_such_endpoint`.
        """
        response = self._send(
            "POST", "/api/v1/device/chunks/fetch", _bearer(credential), body={"ids": ids}
        )
        return _unframe_blobs(response.content, set(ids))

    def commit_snapshot(self, credential: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.post("/api/v1/device/snapshots", body, _bearer(credential))

    def list_snapshots(self, credential: str) -> list[dict[str, Any]]:
        """The device's snapshots, oldest first."""
        answer = self._json("GET", "/api/v1/device/snapshots", _bearer(credential))
        if not isinstance(answer, list) or not all(isinstance(s, dict) for s in answer):
            raise TransientError("bad_answer", "the authority's snapshot list is malformed")
        return answer

    def put_key(self, credential: str, key_b64: str) -> None:
        """Escrow the backup master key (security: standard)."""
        self._send("PUT", "/api/v1/device/key", _bearer(credential), body={"key": key_b64})

    def get_key(self, credential: str) -> str | None:
        """The escrowed master key (base64), or None when none is escrowed."""
        response = self._send("GET", "/api/v1/device/key", _bearer(credential), absent_ok=True)
        if response.status_code == 404:
            return None
        try:
            key = response.json().get("key")
        except (ValueError, AttributeError) as exc:
            raise TransientError("bad_answer", "the authority's key answer is malformed") from exc
        if not isinstance(key, str):
            raise TransientError("bad_answer", "the authority's key answer is malformed")
        return key


@dataclass(frozen=True)
class ServerProbe:
    """One unverified look at the authority: the certificate it presents, and its clock."""

    certificate: bytes  # DER, as the handshake delivered it
    date: str | None  # the Date header of the answer; None when no answer came
    problem: str | None  # why no answer came after the handshake, else None


def probe_server(url: str, *, proxy: str | None = None, timeout: float = 30.0) -> ServerProbe:
    """Shake hands with `url` accepting any certificate, then GET /api/v1/health.

    For `holdfast doctor`: the fingerprints a device really sees are known even when they
    are not the pinned ones, so support staff can compare them. The request carries no
    secret. No completed handshake is a TransientError (`connect_failed` or `timeout`).
    """
    seen: list[bytes] = []
    client = httpx.Client(
        base_url=url,
        verify=recording_context(seen),
        proxy=proxy,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
        trust_env=False,
        headers={"User-Agent": "holdfast-agent"},
    )
    with client:
        try:
            response = client.get("/api/v1/health")
        except httpx.HTTPError as exc:
            if seen:
                return ServerProbe(seen[-1], None, _short(exc))
            if isinstance(exc, httpx.TimeoutException):
                raise TransientError(
                    "timeout", f"the server at {url} did not answer in time"
                ) from exc
            raise TransientError(
                "connect_failed", f"no TLS handshake with {url}: {_short(exc)}"
            ) from exc
    if not seen:  # a handshake without a certificate: nothing a pin could match
        raise TransientError("connect_failed", f"the server at {url} presented no certificate")
    return ServerProbe(seen[-1], response.headers.get("Date"), None)


def _unframe_blobs(data: bytes, asked: set[str]) -> list[tuple[str, bytes | None]]:
    """Split a `/chunks/fetch` answer: per blob 64 hex digits of id, a 4-byte big-endian
    length, the bytes; length 0 means "not stored"."""
    blobs: list[tuple[str, bytes | None]] = []
    view = memoryview(data)
    at = 0
    while at < len(data):
        head = bytes(view[at : at + 68])
        chunk_id = head[:64].decode("ascii", "replace")
        length = int.from_bytes(head[64:68], "big")
        if len(head) < 68 or chunk_id not in asked or at + 68 + length > len(data):
            raise TransientError("bad_answer", "the authority's blob answer is malformed")
        blobs.append((chunk_id, bytes(view[at + 68 : at + 68 + length]) if length else None))
        at += 68 + length
    if not blobs:
        raise TransientError("bad_answer", "the authority answered no blob")
    return blobs


def _bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = ["AuthorityClient", "ServerProbe", "probe_server", "retry_after_seconds"]
