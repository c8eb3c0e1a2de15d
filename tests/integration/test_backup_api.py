"""The backup API over real TLS: packs, blobs, snapshots and key escrow, one archive a device."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.integration.authority_process import Authority, admin

MAX_PACK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Device:
    guid: str
    client: httpx.Client


def _device(authority: Authority, token: str) -> Iterator[Device]:
    guid = str(uuid.uuid4())
    with authority.client() as client:
        response = client.post(
            "/api/v1/deploy/register",
            headers={"X-Deployment-Token": token},
            json={
                "device_guid": guid,
                "os": "linux",
                "username": "jdoe@example.com",
                "user_home": "/home/jdoe",
            },
        )
        assert response.status_code == 200, response.text
        client.headers["Authorization"] = f"Bearer {response.json()['credential']}"
        yield Device(guid, client)


@pytest.fixture
def laptop(authority: Authority, token: str) -> Iterator[Device]:
    yield from _device(authority, token)


@pytest.fixture
def desktop(authority: Authority, token: str) -> Iterator[Device]:
    yield from _device(authority, token)


def chunk_id(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=32).hexdigest()


def pack_of(*blobs: bytes) -> tuple[str, bytes, str]:
    """A pack as the agent sends it: its id, its body, its index header."""
    entries, offset = [], 0
    for blob in blobs:
        entries.append([chunk_id(blob), offset, len(blob)])
        offset += len(blob)
    body = b"".join(blobs)
    header = base64.b64encode(json.dumps(entries).encode()).decode()
    return hashlib.sha256(body).hexdigest(), body, header


def upload(device: Device, *blobs: bytes) -> httpx.Response:
    pack_id, body, header = pack_of(*blobs)
    return device.client.put(
        f"/api/v1/device/packs/{pack_id}",
        content=body,
        headers={"X-Holdfast-Pack-Index": header},
    )


def missing(device: Device, ids: list[str]) -> list[str]:
    response = device.client.post("/api/v1/device/chunks/missing", json={"ids": ids})
    assert response.status_code == 200, response.text
    found: list[str] = response.json()["missing"]
    return found


def commit(device: Device, manifest_id: str) -> httpx.Response:
    return device.client.post(
        "/api/v1/device/snapshots",
        json={
            "manifest_id": manifest_id,
            "files": 2,
            "bytes": 4096,
            "started_at": "2025-03-01T10:00:00+00:00",
            "finished_at": "2025-03-01T10:05:00+00:00",
        },
    )


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def test_an_uploaded_pack_makes_its_blobs_present_and_readable_byte_for_byte(
    laptop: Device,
) -> None:
    blobs = [os.urandom(3000), os.urandom(70_000)]
    ids = [chunk_id(b) for b in blobs]
    assert missing(laptop, ids) == ids

    response = upload(laptop, *blobs)
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 2}
    assert upload(laptop, *blobs).json() == {"stored": 2}  # again: harmless

    assert missing(laptop, [*ids, chunk_id(b"absent")]) == [chunk_id(b"absent")]
    blob = laptop.client.get(f"/api/v1/device/chunks/{ids[1]}")
    assert blob.status_code == 200
    assert blob.headers["content-type"] == "application/octet-stream"
    assert blob.content == blobs[1]


def fetch(device: Device, ids: list[str]) -> list[tuple[str, bytes | None]]:
    """`/chunks/fetch`, its frames split: 64 hex digits, 4-byte length, bytes (0: absent)."""
    response = device.client.post("/api/v1/device/chunks/fetch", json={"ids": ids})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    data, frames = response.content, []
    while data:
        length = int.from_bytes(data[64:68], "big")
        frames.append((data[:64].decode(), data[68 : 68 + length] if length else None))
        data = data[68 + length :]
    return frames


def test_many_blobs_come_back_in_one_request_in_the_order_asked(laptop: Device) -> None:
    blobs = [os.urandom(n) for n in (1, 500, 70_000)]
    upload(laptop, *blobs[:2])
    upload(laptop, blobs[2])
    ids = [chunk_id(b) for b in blobs]
    absent = chunk_id(b"absent")
    assert fetch(laptop, [ids[2], absent, ids[0], ids[1]]) == [
        (ids[2], blobs[2]),
        (absent, None),
        (ids[0], blobs[0]),
        (ids[1], blobs[1]),
    ]


def test_a_fetch_of_too_many_or_malformed_ids_is_refused(laptop: Device) -> None:
    for ids in ([], [chunk_id(str(n).encode()) for n in range(1001)], ["../../etc/passwd"]):
        response = laptop.client.post("/api/v1/device/chunks/fetch", json={"ids": ids})
        assert response.status_code == 422, response.text


def test_another_device_reaches_none_of_the_first_devices_data(
    laptop: Device, desktop: Device
) -> None:
    manifest = os.urandom(500)
    assert upload(laptop, b"private data", manifest).status_code == 200
    assert commit(laptop, chunk_id(manifest)).status_code == 200

    response = desktop.client.get(f"/api/v1/device/chunks/{chunk_id(b'private data')}")
    assert response.status_code == 404
    assert error_code(response) == "chunk_not_found"
    assert missing(desktop, [chunk_id(b"private data")]) == [chunk_id(b"private data")]
    assert fetch(desktop, [chunk_id(b"private data")]) == [(chunk_id(b"private data"), None)]
    assert desktop.client.get("/api/v1/device/snapshots").json() == []
    # Nor can it commit a snapshot over the first device's manifest.
    assert commit(desktop, chunk_id(manifest)).status_code == 409


def test_a_pack_whose_body_is_not_its_id_is_refused_and_nothing_is_stored(
    authority: Authority, laptop: Device
) -> None:
    pack_id, body, header = pack_of(b"sent intact", b"or so it seemed")
    response = laptop.client.put(
        f"/api/v1/device/packs/{pack_id}",
        content=body[:-1] + b"!",
        headers={"X-Holdfast-Pack-Index": header},
    )
    assert response.status_code == 422
    assert error_code(response) == "pack_hash_mismatch"
    assert missing(laptop, [chunk_id(b"sent intact")]) == [chunk_id(b"sent intact")]
    store = authority.data / "store"
    assert not store.exists() or [p for p in store.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    "header",
    [
        None,
        "not base64!",
        base64.b64encode(b"{}").decode(),
        base64.b64encode(b'[["' + b"a" * 64 + b'", 0.0, 4]]').decode(),
        base64.b64encode(b'[["' + b"a" * 64 + b'", 0, 4, "extra"]]').decode(),
        base64.b64encode(b'[["' + b"a" * 64 + b'", 0, 99]]').decode(),
    ],
)
def test_a_malformed_pack_index_is_refused(laptop: Device, header: str | None) -> None:
    pack_id, body, _ = pack_of(b"four")
    headers = {"X-Holdfast-Pack-Index": header} if header is not None else {}
    response = laptop.client.put(f"/api/v1/device/packs/{pack_id}", content=body, headers=headers)
    assert response.status_code == 422
    assert error_code(response) == "invalid_pack_index"


def test_a_pack_holds_at_most_a_hundred_blobs(laptop: Device) -> None:
    # The index header grows with the blob count; uvicorn caps a request head at 16 KiB.
    blobs = [f"small file {n}".encode() for n in range(101)]
    response = upload(laptop, *blobs)
    assert response.status_code == 422
    assert error_code(response) == "invalid_pack_index"
    assert upload(laptop, *blobs[:100]).json() == {"stored": 100}
    assert missing(laptop, [chunk_id(b) for b in blobs]) == [chunk_id(blobs[100])]


def test_a_pack_over_64_mib_is_refused_with_413(laptop: Device) -> None:
    body = bytes(MAX_PACK_BYTES + 1)
    header = base64.b64encode(json.dumps([[chunk_id(b"x"), 0, 10]]).encode()).decode()
    response = laptop.client.put(
        f"/api/v1/device/packs/{hashlib.sha256(body).hexdigest()}",
        content=body,
        headers={"X-Holdfast-Pack-Index": header},
        timeout=60,
    )
    assert response.status_code == 413
    assert error_code(response) == "pack_too_large"


def test_a_chunked_pack_over_64_mib_is_refused_with_413(laptop: Device) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(65):
            yield bytes(1024 * 1024)

    header = base64.b64encode(json.dumps([[chunk_id(b"x"), 0, 10]]).encode()).decode()
    response = laptop.client.put(
        f"/api/v1/device/packs/{'0' * 64}",
        content=body(),
        headers={"X-Holdfast-Pack-Index": header},
        timeout=60,
    )
    assert response.status_code == 413
    assert error_code(response) == "pack_too_large"


def test_a_snapshot_without_its_manifest_is_refused(laptop: Device) -> None:
    response = commit(laptop, chunk_id(b"manifest never uploaded"))
    assert response.status_code == 409
    assert error_code(response) == "snapshot_incomplete"
    assert laptop.client.get("/api/v1/device/snapshots").json() == []


def test_committed_snapshots_are_listed_oldest_first(laptop: Device) -> None:
    first, second = os.urandom(200), os.urandom(200)
    assert upload(laptop, os.urandom(1000), first).status_code == 200
    one = commit(laptop, chunk_id(first))
    assert one.status_code == 200, one.text
    assert commit(laptop, chunk_id(first)).json() == one.json()  # a retried commit
    assert upload(laptop, second).status_code == 200
    two = commit(laptop, chunk_id(second)).json()

    listed = laptop.client.get("/api/v1/device/snapshots").json()
    assert [s["snapshot_id"] for s in listed] == [one.json()["snapshot_id"], two["snapshot_id"]]
    assert listed[0]["manifest_id"] == chunk_id(first)
    assert (listed[0]["files"], listed[0]["bytes"]) == (2, 4096)
    assert listed[0]["created_at"] == one.json()["created_at"]


def test_the_escrowed_key_comes_back_and_is_never_replaced(laptop: Device) -> None:
    assert laptop.client.get("/api/v1/device/key").status_code == 404
    key = base64.b64encode(os.urandom(32)).decode()
    assert laptop.client.put("/api/v1/device/key", json={"key": key}).status_code == 200
    assert laptop.client.put("/api/v1/device/key", json={"key": key}).status_code == 200
    assert laptop.client.get("/api/v1/device/key").json()["key"] == key

    other = base64.b64encode(os.urandom(32)).decode()
    response = laptop.client.put("/api/v1/device/key", json={"key": other})
    assert response.status_code == 409
    assert error_code(response) == "key_conflict"
    assert laptop.client.get("/api/v1/device/key").json()["key"] == key

    short = base64.b64encode(os.urandom(16)).decode()
    response = laptop.client.put("/api/v1/device/key", json={"key": short})
    assert error_code(response) == "invalid_key"


def test_another_device_does_not_get_the_first_devices_key(laptop: Device, desktop: Device) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    assert laptop.client.put("/api/v1/device/key", json={"key": key}).status_code == 200
    assert desktop.client.get("/api/v1/device/key").status_code == 404


def test_without_a_credential_every_backup_call_is_refused(authority: Authority) -> None:
    pack_id, body, header = pack_of(b"anonymous")
    with authority.client() as client:
        answers = [
            client.post("/api/v1/device/chunks/missing", json={"ids": []}),
            client.put(
                f"/api/v1/device/packs/{pack_id}",
                content=body,
                headers={"X-Holdfast-Pack-Index": header},
            ),
            client.get(f"/api/v1/device/chunks/{chunk_id(b'anonymous')}"),
            client.post("/api/v1/device/chunks/fetch", json={"ids": [chunk_id(b"anonymous")]}),
            client.get("/api/v1/device/snapshots"),
            client.get("/api/v1/device/key"),
            client.get("/api/v1/device/snapshots", headers={"Authorization": "Bearer forged"}),
        ]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert error_code(answers[-1]) == "credential_invalid"


def test_more_than_10000_ids_in_one_question_are_refused(laptop: Device) -> None:
    ids = [chunk_id(str(n).encode()) for n in range(10_001)]
    response = laptop.client.post("/api/v1/device/chunks/missing", json={"ids": ids})
    assert response.status_code == 422
    assert len(missing(laptop, ids[:10_000])) == 10_000


def test_a_device_of_a_deactivated_organization_is_refused(
    authority: Authority, laptop: Device
) -> None:
    admin(authority.data, "org", "deactivate", "Demo")
    response = laptop.client.get("/api/v1/device/snapshots")
    assert response.status_code == 403
    assert error_code(response) == "org_deactivated"
