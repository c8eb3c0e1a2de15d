"""The backup API of a registered device: its chunks, packs, snapshots and escrowed key.

Every call authenticates with the device credential (`Authorization: Bearer`), and the
device's GUID is its archive: a credential reaches only its own device's data. The wire
format is docs/backup-design.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from pydantic import AwareDatetime, BaseModel, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from authority.api.deps import bearer_credential, run_in_transaction
from authority.datadir import DataDir
from authority.db import Database, DeviceKey, Snapshot, utcnow
from authority.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from authority.policies import require_active
from authority.registration import device_for_credential
from authority.storage import ChunkStore, FileChunkStore, IndexEntry, check_pack_id

router = APIRouter(prefix="/api/v1/device", tags=["backup"])

MAX_IDS = 10_000
# Packs are cut at 16 MiB; the slack admits a last blob that overshoots (chunks reach 8 MiB).
MAX_PACK_BYTES = 64 * 1024 * 1024
# The index travels in a header, and uvicorn (h11) refuses a request head over 16 KiB once
# it arrives in pieces, as it does over a real network: the connection just closes. At
# most 100 entries (under 12 KiB of base64) always fit; refusing more here makes an agent
# that packs more fail at once, in its own tests over loopback, not later in the field.
MAX_PACK_BLOBS = 100
# One `/chunks/fetch` answer: ids asked at once, and the bytes after which it stops (a
# restore keeps a few answers in flight; this bounds the authority's memory for each).
MAX_FETCH_IDS = 1_000
MAX_FETCH_BYTES = 32 * 1024 * 1024
KEY_BYTES = 32
PACK_INDEX_HEADER = "X-Holdfast-Pack-Index"

ChunkId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "`credential_missing`, `credential_invalid`"},
    403: {"description": "`org_deactivated`"},
    422: {"description": "`invalid_request` and other validation codes"},
    503: {
        "description": "`overloaded`, `database_busy`, `internal_error`; always with Retry-After"
    },
}


@dataclass(frozen=True)
class Caller:
    """The authenticated device: its row, and its archive in the store."""

    device_id: int
    archive: str


def chunk_store(data: DataDir, db: Database) -> FileChunkStore:
    """The store of a data folder: DATA/store, created (mode 0700) at the first upload."""
    return FileChunkStore(data.root / "store", db)


def _store(request: Request) -> ChunkStore:
    store: ChunkStore = request.app.state.store
    return store


def _caller(request: Request, authorization: str | None) -> Caller:
    credential = bearer_credential(authorization)

    def work(session: Session) -> Caller:
        device = device_for_credential(session, credential)
        require_active(device.org)
        return Caller(device_id=device.id, archive=device.guid)

    # A transaction of its own, reading only: the store's work runs in its own
    # transactions, and nesting them would hold two pooled connections per request.
    return run_in_transaction(request, work)


class MissingRequest(BaseModel):
    ids: list[ChunkId] = Field(..., max_length=MAX_IDS)


class MissingResponse(BaseModel):
    missing: list[str]


@router.post("/chunks/missing", responses=ERRORS, response_model=MissingResponse)
def missing_chunks(
    body: MissingRequest, request: Request, authorization: str | None = Header(None)
) -> MissingResponse:
    """Which of these chunk ids the device's archive lacks, in the order given."""
    caller = _caller(request, authorization)
    return MissingResponse(missing=_store(request).missing(caller.archive, body.ids))


def parse_pack_index(value: str | None) -> list[IndexEntry]:
    """The `X-Holdfast-Pack-Index` header: base64 of JSON `[[chunk_id, offset, length], ...]`.

    Strict: anything else (floats, booleans, extra fields) is a client bug worth naming.
    """
    if not value:
        raise InvalidInput(f"the {PACK_INDEX_HEADER} header is missing", code="invalid_pack_index")
    try:
        entries = json.loads(base64.b64decode(value.strip(), validate=True))
    except (binascii.Error, ValueError, RecursionError) as exc:  # `[[[[...` is refused too
        raise InvalidInput(
            f"the {PACK_INDEX_HEADER} header is not base64 of JSON", code="invalid_pack_index"
        ) from exc
    if not isinstance(entries, list):
        raise InvalidInput(
            f"the {PACK_INDEX_HEADER} header is not a JSON list", code="invalid_pack_index"
        )
    if len(entries) > MAX_PACK_BLOBS:
        raise InvalidInput(
            f"a pack may hold at most {MAX_PACK_BLOBS} blobs; this one lists {len(entries)}",
            code="invalid_pack_index",
        )
    index: list[IndexEntry] = []
    for n, entry in enumerate(entries):
        match entry:
            # `bool` is an `int` to Python; `true` is not an offset.
            case [str(chunk_id), int(offset), int(length)] if not isinstance(
                offset, bool
            ) and not isinstance(length, bool):
                index.append((chunk_id, offset, length))
            case _:
                raise InvalidInput(
                    f"{PACK_INDEX_HEADER} entry {n} is not [chunk_id, offset, length]",
                    code="invalid_pack_index",
                )
    return index


async def _read_pack_body(request: Request) -> bytes:
    """The body, refused as soon as it is known to exceed MAX_PACK_BYTES.

    A declared Content-Length is checked before reading anything; a chunked body is
    counted as it arrives, so neither can make the server hold more than the limit.
    """
    too_large = PayloadTooLarge(
        f"a pack may be at most {MAX_PACK_BYTES} bytes", code="pack_too_large"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_PACK_BYTES:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_PACK_BYTES:
            raise too_large
        parts.append(part)
    return b"".join(parts)


class StoredResponse(BaseModel):
    stored: int = Field(description="the number of blobs the pack's index lists, now stored")


@router.put(
    "/packs/{pack_id}",
    responses={
        **ERRORS,
        413: {"description": "`pack_too_large`: the body exceeds 64 MiB"},
        422: {
            "description": "`invalid_pack_id`, `invalid_pack_index`, `pack_hash_mismatch` "
            "(the body's SHA-256 is not the pack id)"
        },
    },
    response_model=StoredResponse,
)
async def put_pack(
    pack_id: str,
    request: Request,
    authorization: str | None = Header(None),
    x_holdfast_pack_index: str | None = Header(None),
) -> StoredResponse:
    """Store a pack (idempotent): blobs concatenated, the index in a header."""
    # The credential and the index first: no 64 MiB read for a request refused anyway.
    caller = await run_in_threadpool(_caller, request, authorization)
    check_pack_id(pack_id)
    index = parse_pack_index(x_holdfast_pack_index)
    data = await _read_pack_body(request)
    stored = await run_in_threadpool(_store(request).put_pack, caller.archive, pack_id, data, index)
    return StoredResponse(stored=stored)


@router.get(
    "/chunks/{chunk_id}",
    responses={
        **ERRORS,
        200: {"content": {"application/octet-stream": {}}, "description": "the blob"},
        404: {"description": "`chunk_not_found`: not in this device's archive"},
    },
    response_class=Response,
)
def get_chunk(
    chunk_id: str, request: Request, authorization: str | None = Header(None)
) -> Response:
    """One blob of the device's archive, byte for byte as uploaded."""
    caller = _caller(request, authorization)
    blob = _store(request).get_blob(caller.archive, chunk_id)
    return Response(content=blob, media_type="application/octet-stream")


class FetchRequest(BaseModel):
    ids: list[ChunkId] = Field(..., min_length=1, max_length=MAX_FETCH_IDS)


def frame_blobs(blobs: list[tuple[str, bytes | None]]) -> bytes:
    """The answer of `/chunks/fetch`: per blob its id (64 ASCII hex digits), its length
    (4 bytes, big-endian) and its bytes; length 0 says "not stored" (a sealed blob is
    never empty)."""
    parts: list[bytes] = []
    for chunk_id, blob in blobs:
        parts += [chunk_id.encode("ascii"), len(blob or b"").to_bytes(4, "big"), blob or b""]
    return b"".join(parts)


@router.post(
    "/chunks/fetch",
    responses={
        **ERRORS,
        200: {
            "content": {"application/octet-stream": {}},
            "description": "id, 4-byte length, bytes per blob; length 0: not stored",
        },
    },
    response_class=Response,
)
def fetch_chunks(
    body: FetchRequest, request: Request, authorization: str | None = Header(None)
) -> Response:
    """Many blobs of the device's archive in one answer, for restores.

    The answer holds the blobs in the order asked, and may stop early (at about
    MAX_FETCH_BYTES, never before the first): the agent asks again for the rest.
    """
    caller = _caller(request, authorization)
    blobs = _store(request).get_blobs(caller.archive, body.ids, MAX_FETCH_BYTES)
    return Response(content=frame_blobs(blobs), media_type="application/octet-stream")


class SnapshotRequest(BaseModel):
    manifest_id: ChunkId
    files: int = Field(..., ge=0)
    bytes: int = Field(..., ge=0)
    started_at: AwareDatetime
    finished_at: AwareDatetime


class SnapshotCreated(BaseModel):
    snapshot_id: str
    created_at: datetime


class SnapshotView(SnapshotCreated):
    files: int
    bytes: int
    manifest_id: str
    started_at: datetime
    finished_at: datetime


@router.post(
    "/snapshots",
    responses={
        **ERRORS,
        409: {"description": "`snapshot_incomplete`: the manifest blob is not stored"},
    },
    response_model=SnapshotCreated,
)
def commit_snapshot(
    body: SnapshotRequest, request: Request, authorization: str | None = Header(None)
) -> SnapshotCreated:
    """Record a finished backup; a retried commit of the same manifest gets the same answer."""
    caller = _caller(request, authorization)
    if body.finished_at < body.started_at:
        raise InvalidInput("finished_at is before started_at", code="invalid_snapshot")
    if not _store(request).has(caller.archive, body.manifest_id):
        raise Conflict(
            f"manifest {body.manifest_id} is not stored: upload its pack, then commit",
            code="snapshot_incomplete",
        )

    def work(session: Session) -> Snapshot:
        existing = session.scalar(
            select(Snapshot).where(
                Snapshot.device_id == caller.device_id, Snapshot.manifest_id == body.manifest_id
            )
        )
        if existing is not None:
            return existing
        snapshot = Snapshot(
            snapshot_id=str(uuid.uuid4()),
            device_id=caller.device_id,
            manifest_id=body.manifest_id,
            file_count=body.files,
            byte_count=body.bytes,
            started_at=body.started_at,
            finished_at=body.finished_at,
            created_at=utcnow(),
        )
        session.add(snapshot)
        session.flush()
        return snapshot

    # Two commits racing on the unique (device, manifest) pair: the loser is retried by
    # run_in_transaction and finds the winner's row.
    snapshot = run_in_transaction(request, work)
    return SnapshotCreated(snapshot_id=snapshot.snapshot_id, created_at=snapshot.created_at)


@router.get("/snapshots", responses=ERRORS, response_model=list[SnapshotView])
def list_snapshots(
    request: Request, authorization: str | None = Header(None)
) -> list[SnapshotView]:
    """The device's snapshots, oldest first."""
    caller = _caller(request, authorization)
    query = (
        select(Snapshot)
        .where(Snapshot.device_id == caller.device_id)
        .order_by(Snapshot.created_at, Snapshot.id)
    )
    rows = run_in_transaction(request, lambda session: list(session.scalars(query)))
    return [
        SnapshotView(
            snapshot_id=s.snapshot_id,
            created_at=s.created_at,
            files=s.file_count,
            bytes=s.byte_count,
            manifest_id=s.manifest_id,
            started_at=s.started_at,
            finished_at=s.finished_at,
        )
        for s in rows
    ]


class KeyBody(BaseModel):
    key: str = Field(..., max_length=256, description="base64 of the 32-byte master key")


class KeyView(BaseModel):
    key: str
    escrowed_at: datetime


class KeyEscrowed(BaseModel):
    escrowed_at: datetime


def _check_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raw = b""
    if len(raw) != KEY_BYTES:
        raise InvalidInput(f"the key must be base64 of {KEY_BYTES} bytes", code="invalid_key")
    return value


@router.put(
    "/key",
    responses={
        **ERRORS,
        409: {"description": "`key_conflict`: another key is escrowed; GET it instead"},
        422: {"description": "`invalid_key`: not base64 of 32 bytes"},
    },
    response_model=KeyEscrowed,
)
def escrow_key(
    body: KeyBody, request: Request, authorization: str | None = Header(None)
) -> KeyEscrowed:
    """Escrow the device's master key, so an administrator can restore a lost device.

    Stored as given. A real deployment would wrap it with a server-side key (an HSM or
    KMS) before it reaches the database; that is not in scope here. Never replaced: the
    escrowed key is the only way into the snapshots it encrypted, so an agent that lost
    its key file must GET it back rather than escrow a new one.
    """
    caller = _caller(request, authorization)
    key = _check_key(body.key)

    def work(session: Session) -> DeviceKey:
        current = session.get(DeviceKey, caller.device_id)
        if current is None:
            current = DeviceKey(device_id=caller.device_id, key=key, escrowed_at=utcnow())
            session.add(current)
            session.flush()
        return current

    escrowed = run_in_transaction(request, work)
    if escrowed.key != key:
        raise Conflict(
            "another key is already escrowed for this device; GET /api/v1/device/key "
            "returns it (replacing it would make the snapshots it encrypted unreadable)",
            code="key_conflict",
        )
    return KeyEscrowed(escrowed_at=escrowed.escrowed_at)


@router.get(
    "/key",
    responses={**ERRORS, 404: {"description": "`key_not_found`: no key escrowed yet"}},
    response_model=KeyView,
)
def fetch_key(request: Request, authorization: str | None = Header(None)) -> KeyView:
    """The device's escrowed master key."""
    caller = _caller(request, authorization)
    escrowed = run_in_transaction(request, lambda s: s.get(DeviceKey, caller.device_id))
    if escrowed is None:
        raise NotFound("no key is escrowed for this device", code="key_not_found")
    return KeyView(key=escrowed.key, escrowed_at=escrowed.escrowed_at)


__all__ = [
    "MAX_IDS",
    "MAX_PACK_BLOBS",
    "MAX_PACK_BYTES",
    "PayloadTooLarge",
    "chunk_store",
    "parse_pack_index",
    "router",
]
