"""The backup calls of AuthorityClient: headers, bodies, timeouts, error mapping."""

from __future__ import annotations

import gc
import json
import tracemalloc

import httpx
import pytest

from agent.errors import PermanentError, TransientError
from agent.transport import PACK_TIMEOUT, AuthorityClient
from tests.unit.test_backup_fake import CREDENTIAL, URL, error


def client_for(handler: httpx.MockTransport) -> AuthorityClient:
    return AuthorityClient(URL, timeout=10.0, transport=handler)


def test_a_pack_travels_as_bytes_with_its_index_header_and_a_longer_timeout() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"stored": 2})

    with client_for(httpx.MockTransport(handler)) as client:
        assert client.put_pack(CREDENTIAL, "ab" * 32, b"\x00\x01body", "aW5kZXg=") == 2
    request = seen[0]
    assert request.method == "PUT"
    assert request.url.path == f"/api/v1/device/packs/{'ab' * 32}"
    assert request.content == b"\x00\x01body"
    assert request.headers["X-Holdfast-Pack-Index"] == "aW5kZXg="
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.headers["Authorization"] == f"Bearer {CREDENTIAL}"
    assert request.extensions["timeout"]["read"] == PACK_TIMEOUT


def test_missing_sends_the_ids_and_checks_the_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"ids": ["a" * 64]}
        return httpx.Response(200, json={"missing": "not a list"})

    with client_for(httpx.MockTransport(handler)) as client, pytest.raises(TransientError) as bad:
        client.missing_chunks(CREDENTIAL, ["a" * 64])
    assert bad.value.code == "bad_answer"


def test_a_timeout_is_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with client_for(httpx.MockTransport(handler)) as client, pytest.raises(TransientError) as slow:
        client.get_blob(CREDENTIAL, "a" * 64)
    assert slow.value.code == "timeout"


def test_an_authority_without_backup_endpoints_is_not_taken_for_an_absent_key() -> None:
    transport = httpx.MockTransport(lambda _r: error(404, "no_such_endpoint"))
    with client_for(transport) as client, pytest.raises(PermanentError) as old:
        client.get_key(CREDENTIAL)
    assert old.value.code == "no_such_endpoint"


def test_snapshots_must_be_a_list_of_objects() -> None:
    transport = httpx.MockTransport(lambda _r: httpx.Response(200, json={"not": "a list"}))
    with client_for(transport) as client, pytest.raises(TransientError):
        client.list_snapshots(CREDENTIAL)


def test_fetched_bodies_are_freed_at_once_not_when_the_garbage_collector_runs() -> None:
    # httpx binds each response and its stream to each other: without unbinding them, the
    # bodies of a restore piled up until a garbage collection (269 MB at once, measured).
    blob = b"x" * (2 * 1024 * 1024)
    chunk_id = "c" * 64
    body = chunk_id.encode() + len(blob).to_bytes(4, "big") + blob

    def handler(_request: httpx.Request) -> httpx.Response:
        half = len(body) // 2  # in two pieces: each answer's body is a new object
        return httpx.Response(200, content=iter([body[:half], body[half:]]))

    with client_for(httpx.MockTransport(handler)) as client:
        gc.disable()
        tracemalloc.start()
        try:
            for _ in range(10):
                assert client.get_blobs(CREDENTIAL, [chunk_id]) == [(chunk_id, blob)]
            held, _peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            gc.enable()
    assert held < len(body)
