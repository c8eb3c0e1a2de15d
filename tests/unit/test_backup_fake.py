"""An in-memory authority speaking the backup wire format (docs/backup-design.md), and
the tests that keep it faithful to that document.

The other backup tests drive a real AuthorityClient through `httpx.MockTransport` into
this fake, so everything down to the headers and status codes is exercised.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agent.errors import PermanentError, TransientError
from agent.transport import AuthorityClient
from authority.api.backup_routes import frame_blobs
from authority.storage import prefix_within

CREDENTIAL = "device-credential-0123456789"
URL = "https://authority.test"
# uvicorn (h11) refuses a request head larger than this.
MAX_HEAD = 16 * 1024
_ID = re.compile(r"[0-9a-f]{64}")

Fault = Callable[[httpx.Request], httpx.Response | None]


def error(status: int, code: str, message: str = "refused") -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


class FakeAuthority:
    """One device's archive: blobs by chunk id, packs, snapshots, the escrowed key."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.packs: dict[str, bytes] = {}
        self.snapshots: list[dict[str, Any]] = []
        self.key: str | None = None
        self.calls: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        # `/chunks/fetch`: where its answer stops, and whether this authority has it.
        self.fetch_max_bytes = 32 * 1024 * 1024
        self.fetch_supported = True
        self._lock = threading.Lock()

    def client(self, **kwargs: Any) -> AuthorityClient:
        return AuthorityClient(URL, transport=httpx.MockTransport(self.handle), **kwargs)

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, p in self.calls if m == method and p.startswith(prefix))

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            path = request.url.path
            self.calls.append((request.method, path))
            for fault in self.faults:
                answer = fault(request)
                if answer is not None:
                    return answer
            head = len(request.method) + len(str(request.url)) + 12
            head += sum(len(k) + len(v) + 4 for k, v in request.headers.items())
            if head > MAX_HEAD:
                return error(400, "http_error", "request head too large")
            if request.headers.get("Authorization") != f"Bearer {CREDENTIAL}":
                return error(401, "unauthorized", "unknown device credential")
            return self._route(request, path.removeprefix("/api/v1/device"))

    def _route(self, request: httpx.Request, path: str) -> httpx.Response:
        exact: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]] = {
            ("POST", "/chunks/missing"): self._missing,
            ("POST", "/chunks/fetch"): self._fetch,
            ("POST", "/snapshots"): lambda r: self._commit(json.loads(r.content)),
            ("GET", "/snapshots"): lambda _r: httpx.Response(200, json=self.snapshots),
            ("PUT", "/key"): self._put_key,
            ("GET", "/key"): self._get_key,
        }
        route = exact.get((request.method, path))
        if route is not None:
            return route(request)
        if request.method == "PUT" and path.startswith("/packs/"):
            return self._put_pack(request, path.removeprefix("/packs/"))
        if request.method == "GET" and path.startswith("/chunks/"):
            return self._get_blob(path.removeprefix("/chunks/"))
        return error(404, "no_such_endpoint")

    def _missing(self, request: httpx.Request) -> httpx.Response:
        ids = json.loads(request.content)["ids"]
        if len(ids) > 10_000 or not all(isinstance(i, str) and _ID.fullmatch(i) for i in ids):
            return error(422, "invalid_request")
        return httpx.Response(200, json={"missing": [i for i in ids if i not in self.blobs]})

    def _fetch(self, request: httpx.Request) -> httpx.Response:
        if not self.fetch_supported:
            return error(404, "no_such_endpoint")
        ids = list(dict.fromkeys(json.loads(request.content)["ids"]))
        if not 0 < len(ids) <= 1000 or not all(
            isinstance(i, str) and _ID.fullmatch(i) for i in ids
        ):
            return error(422, "invalid_request")
        lengths = {i: len(self.blobs[i]) for i in ids if i in self.blobs}
        chosen = prefix_within(ids, lengths, self.fetch_max_bytes)
        return httpx.Response(
            200,
            content=frame_blobs([(i, self.blobs.get(i)) for i in chosen]),
            headers={"Content-Type": "application/octet-stream"},
        )

    def _get_blob(self, cid: str) -> httpx.Response:
        blob = self.blobs.get(cid)
        if blob is None:
            return error(404, "not_found", "no such chunk")
        return httpx.Response(
            200, content=blob, headers={"Content-Type": "application/octet-stream"}
        )

    def _put_key(self, request: httpx.Request) -> httpx.Response:
        self.key = json.loads(request.content)["key"]
        return httpx.Response(200, json={})

    def _get_key(self, _request: httpx.Request) -> httpx.Response:
        if self.key is None:
            return error(404, "not_found", "no key escrowed")
        return httpx.Response(200, json={"key": self.key})

    def _put_pack(self, request: httpx.Request, pack_id: str) -> httpx.Response:
        body = request.content
        if hashlib.sha256(body).hexdigest() != pack_id:
            return error(422, "pack_id_mismatch", "the pack's SHA-256 is not its id")
        try:
            index = json.loads(base64.b64decode(request.headers["X-Holdfast-Pack-Index"]))
        except (KeyError, ValueError):
            return error(422, "invalid_index")
        for cid, offset, length in index:
            if not _ID.fullmatch(cid) or offset < 0 or length <= 0 or offset + length > len(body):
                return error(422, "invalid_index")
        self.packs[pack_id] = body
        for cid, offset, length in index:
            self.blobs[cid] = body[offset : offset + length]
        return httpx.Response(200, json={"stored": len(index)})

    def _commit(self, body: dict[str, Any]) -> httpx.Response:
        if body.get("manifest_id") not in self.blobs:
            return error(409, "snapshot_incomplete", "the manifest blob is not stored")
        snapshot = {
            "snapshot_id": f"snap-{len(self.snapshots) + 1:04d}",
            "created_at": body["finished_at"],
            "files": body["files"],
            "bytes": body["bytes"],
            "manifest_id": body["manifest_id"],
        }
        self.snapshots.append(snapshot)
        return httpx.Response(
            200, json={"snapshot_id": snapshot["snapshot_id"], "created_at": snapshot["created_at"]}
        )


def _index(entries: list[list[Any]]) -> str:
    return base64.b64encode(json.dumps(entries).encode()).decode()


def test_a_pack_whose_body_is_not_its_sha256_is_refused() -> None:
    fake = FakeAuthority()
    with fake.client() as client, pytest.raises(PermanentError) as caught:
        client.put_pack(CREDENTIAL, "0" * 64, b"blob", _index([["a" * 64, 0, 4]]))
    assert caught.value.code == "pack_id_mismatch"
    assert fake.blobs == {}


def test_a_stored_pack_answers_missing_and_serves_its_blobs() -> None:
    fake = FakeAuthority()
    body = b"first" + b"second"
    pack_id = hashlib.sha256(body).hexdigest()
    with fake.client() as client:
        stored = client.put_pack(
            CREDENTIAL, pack_id, body, _index([["a" * 64, 0, 5], ["b" * 64, 5, 6]])
        )
        assert stored == 2
        assert client.missing_chunks(CREDENTIAL, ["a" * 64, "c" * 64]) == ["c" * 64]
        assert client.get_blob(CREDENTIAL, "b" * 64) == b"second"


def test_blobs_come_back_in_batches_none_for_an_absent_one() -> None:
    fake = FakeAuthority()
    fake.blobs = {"a" * 64: b"first", "b" * 64: b"second"}
    with fake.client() as client:
        assert client.get_blobs(CREDENTIAL, ["b" * 64, "c" * 64, "a" * 64]) == [
            ("b" * 64, b"second"),
            ("c" * 64, None),
            ("a" * 64, b"first"),
        ]
        fake.fetch_max_bytes = 6
        assert client.get_blobs(CREDENTIAL, ["b" * 64, "a" * 64]) == [("b" * 64, b"second")]


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no blob at all
        b"d" * 64 + (5).to_bytes(4, "big") + b"12345",  # an id not asked for
        b"a" * 64 + (99).to_bytes(4, "big") + b"short",  # shorter than it says
        b"a" * 60,  # a cut frame head
    ],
)
def test_a_malformed_batch_answer_is_a_transient_bad_answer(body: bytes) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    transport = httpx.MockTransport(handler)
    with AuthorityClient(URL, transport=transport) as client, pytest.raises(TransientError) as exc:
        client.get_blobs(CREDENTIAL, ["a" * 64])
    assert exc.value.code == "bad_answer"


def test_an_absent_chunk_is_chunk_not_found() -> None:
    with FakeAuthority().client() as client, pytest.raises(PermanentError) as caught:
        client.get_blob(CREDENTIAL, "d" * 64)
    assert caught.value.code == "chunk_not_found"


def test_a_commit_without_its_manifest_is_snapshot_incomplete() -> None:
    with FakeAuthority().client() as client, pytest.raises(PermanentError) as caught:
        client.commit_snapshot(
            CREDENTIAL,
            {"manifest_id": "e" * 64, "files": 0, "bytes": 0, "started_at": "", "finished_at": ""},
        )
    assert caught.value.code == "snapshot_incomplete"


def test_the_key_is_absent_until_escrowed() -> None:
    fake = FakeAuthority()
    with fake.client() as client:
        assert client.get_key(CREDENTIAL) is None
        client.put_key(CREDENTIAL, "a2V5")
        assert client.get_key(CREDENTIAL) == "a2V5"


def test_a_wrong_credential_is_refused_and_a_busy_server_is_transient() -> None:
    fake = FakeAuthority()
    with fake.client() as client:
        with pytest.raises(PermanentError) as caught:
            client.list_snapshots("someone-else")
        assert caught.value.code == "unauthorized"
        fake.faults.append(lambda _r: httpx.Response(503, headers={"Retry-After": "7"}))
        with pytest.raises(TransientError) as busy:
            client.list_snapshots(CREDENTIAL)
        assert busy.value.retry_after == 7
