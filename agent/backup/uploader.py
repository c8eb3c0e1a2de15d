"""Getting chunks to the authority: ask what it lacks, pack that, upload it concurrently.

The reading thread hands over plaintext chunks; they wait in a bounded pending list until
one `chunks/missing` call (at most 10,000 ids) says which the authority lacks. Only those
are sealed and packed, in the upload workers (zstd and AES-GCM release the GIL, so sealing
runs beside the reading), so a run resumed after an interruption neither re-encrypts nor
re-sends what already arrived.

Memory stays bounded: the pending list holds at most `PENDING_BYTES`, and at most
`workers` packs are in flight; the reader waits for a free slot (back-pressure). Under the
policy's bandwidth limit the workers share one `UploadLimit`, so that back-pressure also
slows the reading down to the limit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial

from agent import logs
from agent.backup.blobs import BLOB_OVERHEAD, seal_parts
from agent.backup.keys import Subkeys
from agent.backup.packer import Pack, Packer
from agent.backup.retry import Retrier
from agent.backup.throttle import UploadLimit
from agent.errors import BackupCancelled
from agent.transport import AuthorityClient

log = logging.getLogger(logs.LOGGER)

MISSING_BATCH = 10_000
PENDING_BYTES = 8 * 1024 * 1024
# Packs sealed and sent at once: each holds up to a pack (8 MiB) and the chunk being
# sealed; 3 keep two cores busy beside the reading, and a fourth only added memory.
UPLOAD_WORKERS = 3
UPLOAD_THREAD = "holdfast-upload"
# How often a run waiting for an upload slot looks whether it was stopped.
CANCEL_CHECK_SECONDS = 0.25

Batch = list[tuple[str, bytes]]


@dataclass(frozen=True)
class _Sent:
    chunks: int
    plain_bytes: int
    pack_bytes: int


class Uploader:
    """One run's uploads. Use as a context manager; `drain` before the manifest goes."""

    def __init__(
        self,
        client: AuthorityClient,
        credential: str,
        keys: Subkeys,
        retry: Retrier,
        *,
        workers: int = UPLOAD_WORKERS,
        pending_bytes: int = PENDING_BYTES,
        limit: UploadLimit | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.credential = credential
        self.keys = keys
        self.retry = retry
        self.workers = max(1, workers)
        self.pending_bytes = pending_bytes
        self.limit = limit
        self.cancel = cancel
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=UPLOAD_THREAD)
        self._inflight: set[Future[_Sent]] = set()
        self._pending: Batch = []
        self._pending_size = 0
        self._to_verify: list[str] = []
        # Every id this run has queued, sent or seen the authority hold: asked about once.
        self._known: set[str] = set()
        self._limits = Packer()
        self.lost: set[str] = set()  # ids from the files cache the authority no longer has
        self.chunks_uploaded = 0
        self.new_bytes = 0
        self.sent_bytes = 0
        self.packs = 0
        self.requests = 0

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        if exc_type is None:
            # Every upload was collected (drain): the threads end at once.
            self._pool.shutdown(wait=True, cancel_futures=True)
            return
        # The run is over (stopped, or failed): packs still in flight are moot. One sent to
        # an authority that vanished without closing the connection (a laptop that changed
        # networks) waits out the pack timeout, 120 s: the stop must not wait with it.
        # Such a thread ends on its own when its request fails; the snapshot was not made,
        # and the next run sends again whatever did not arrive.
        stranded = sum(1 for future in self._inflight if not future.done())
        if stranded:
            log.info("the backup ends without waiting for %d upload(s) in flight", stranded)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wants(self, cid: str) -> bool:
        """Whether the chunk is news to this run (else neither sealed nor asked about)."""
        return cid not in self._known

    def add(self, cid: str, data: bytes) -> None:
        """Queue a chunk read from a file; it is uploaded if the authority lacks it."""
        if cid in self._known:
            return
        self._known.add(cid)
        self._pending.append((cid, data))
        self._pending_size += len(data)
        if self._pending_size >= self.pending_bytes or len(self._pending) >= MISSING_BATCH:
            self._flush_pending()

    def verify(self, ids: Sequence[str]) -> None:
        """Queue ids the files cache vouches for, to confirm the authority still holds them."""
        for cid in ids:
            if cid not in self._known:
                self._known.add(cid)
                self._to_verify.append(cid)
        if len(self._to_verify) >= MISSING_BATCH:
            self._flush_verify()

    def drain(self) -> None:
        """Everything queued is asked about, uploaded and acknowledged; errors surface here."""
        self._flush_pending()
        self._flush_verify()
        while self._inflight:
            self._collect()

    def unrecovered(self) -> set[str]:
        """Lost ids that no file of this run has queued again."""
        return self.lost - self._known

    def put_alone(self, cid: str, data: bytes) -> None:
        """Seal and upload one blob in a pack of its own, now (the manifest, last).

        Counted as a request and bytes sent, not as an uploaded chunk: those count data.
        """
        sent = self._seal_and_put([(cid, data)])
        self.sent_bytes += sent.pack_bytes
        self.packs += 1
        self.requests += 1

    def _missing(self, ids: list[str]) -> set[str]:
        missing: set[str] = set()
        for start in range(0, len(ids), MISSING_BATCH):
            batch = ids[start : start + MISSING_BATCH]
            self.requests += 1
            missing.update(self.retry(partial(self.client.missing_chunks, self.credential, batch)))
        return missing

    def _flush_verify(self) -> None:
        if self._to_verify:
            lost = self._missing(self._to_verify)
            self._to_verify = []
            if lost:
                log.warning("the authority lacks %d chunks the files cache expected", len(lost))
                self.lost |= lost
                # Forgotten so the files that re-read them can queue them for upload.
                self._known -= lost

    def _flush_pending(self) -> None:
        pending, self._pending, self._pending_size = self._pending, [], 0
        if not pending:
            return
        missing = self._missing([cid for cid, _ in pending])
        # Consumed from the end so each chunk's bytes are freed once handed to a batch.
        pending.reverse()
        batch: Batch = []
        size = 0
        while pending:
            cid, data = pending.pop()
            if cid not in missing:
                continue
            # Sealed size is at most plaintext + overhead: a batch within the pack's limits
            # in that bound makes a pack within them too.
            bound = len(data) + BLOB_OVERHEAD
            if batch and (
                len(batch) >= self._limits.max_blobs or size + bound > self._limits.max_bytes
            ):
                self._submit(batch)
                batch, size = [], 0
            batch.append((cid, data))
            size += bound
        if batch:
            self._submit(batch)

    def _submit(self, batch: Batch) -> None:
        while len(self._inflight) >= self.workers:
            self._collect()
        self._inflight.add(self._pool.submit(self._seal_and_put, batch))

    def _collect(self) -> None:
        done: set[Future[_Sent]] = set()
        while not done:
            if self.cancel is not None and self.cancel.is_set():
                raise BackupCancelled()
            done, _ = wait(self._inflight, CANCEL_CHECK_SECONDS, return_when=FIRST_COMPLETED)
        for future in done:
            self._inflight.discard(future)
            self._account(future.result())  # a failed upload fails the run, here

    def _account(self, sent: _Sent) -> None:
        self.chunks_uploaded += sent.chunks
        self.new_bytes += sent.plain_bytes
        self.sent_bytes += sent.pack_bytes
        self.packs += 1
        self.requests += 1

    def _seal_and_put(self, batch: Batch) -> _Sent:
        """In a worker: seal the batch into one pack and upload it, with retries."""
        chunks = len(batch)
        plain = sum(len(data) for _, data in batch)
        packer = Packer()
        # Sealed one by one, each plaintext dropped once sealed: a worker holds about one
        # pack's worth, not the plaintext and the pack side by side.
        batch.reverse()
        while batch:
            cid, data = batch.pop()
            packer.add(cid, *seal_parts(self.keys, cid, data))
            del data
        pack: Pack = packer.finish()
        self.retry(partial(self._put, pack))
        log.debug("pack %s uploaded: %d blobs, %d bytes", pack.pack_id[:12], chunks, pack.size)
        return _Sent(chunks, plain, pack.size)

    def _put(self, pack: Pack) -> None:
        # Each attempt pays for its bytes: a retry sends the whole pack again.
        if self.limit is not None:
            self.limit.take(pack.size)
        self.client.put_pack(self.credential, pack.pack_id, pack.parts, pack.index_header)


__all__ = ["MISSING_BATCH", "UPLOAD_THREAD", "UPLOAD_WORKERS", "Uploader"]
