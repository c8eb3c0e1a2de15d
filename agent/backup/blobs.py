"""Chunk ids and blobs: how one chunk (or a manifest) is named, sealed and opened.

    blob = version (1) | flags (bit0 = zstd) | nonce (12) | AES-256-GCM(data), AAD = chunk id

The id is the keyed BLAKE3 of the plaintext. Opening authenticates the ciphertext against
the id it was asked for (a corrupted or swapped blob fails GCM), then checks the plaintext
hashes to that id again, which also covers the header byte GCM does not (the flags).
"""

from __future__ import annotations

import os
import threading

import zstandard
from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.backup.keys import Subkeys
from agent.errors import BlobCorrupt

BLOB_VERSION = 1
FLAG_ZSTD = 0x01
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 2 + NONCE_BYTES
# The most a blob can exceed its plaintext: stored raw when zstd does not shrink it.
BLOB_OVERHEAD = HEADER_BYTES + TAG_BYTES
ZSTD_LEVEL = 3

# zstandard's (de)compressor objects are not safe to share between threads; blobs are
# sealed in the upload workers and opened in the restore workers.
_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def chunk_id(keys: Subkeys, data: bytes) -> str:
    """The chunk's name: 64 hex of BLAKE3 keyed with the id key."""
    return blake3(data, key=keys.id_key).hexdigest()


def seal_parts(keys: Subkeys, cid: str, data: bytes) -> tuple[bytes, bytes]:
    """The blob for `data` (whose id is `cid`) as (header and nonce, ciphertext): a pack
    sends the parts back to back, so an 8 MiB chunk is not copied once more to join them.
    Compressed when that helps, then encrypted."""
    flags = 0
    packed = _compressor().compress(data)
    if len(packed) < len(data):
        flags, data = FLAG_ZSTD, packed
    del packed  # incompressible: the attempt's 8 MiB go before the ciphertext's come
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(keys.encryption_key).encrypt(nonce, data, cid.encode("ascii"))
    return bytes((BLOB_VERSION, flags)) + nonce, ciphertext


def seal(keys: Subkeys, cid: str, data: bytes) -> bytes:
    """The blob for `data` (whose id is `cid`), in one piece."""
    return b"".join(seal_parts(keys, cid, data))


def open_blob(keys: Subkeys, cid: str, blob: bytes) -> bytes:
    """The plaintext of a blob fetched as `cid`, or BlobCorrupt saying what failed."""
    if len(blob) < BLOB_OVERHEAD:
        raise BlobCorrupt(cid, f"blob is truncated ({len(blob)} bytes)")
    version, flags = blob[0], blob[1]
    if version != BLOB_VERSION:
        raise BlobCorrupt(cid, f"unknown blob version {version}")
    if flags & ~FLAG_ZSTD:
        raise BlobCorrupt(cid, f"unknown blob flags {flags:#x}")
    nonce = blob[2:HEADER_BYTES]
    try:
        # A view, not a slice: an 8 MiB blob is not copied before it is decrypted.
        sealed = memoryview(blob)[HEADER_BYTES:]
        data = AESGCM(keys.encryption_key).decrypt(nonce, sealed, cid.encode("ascii"))
    except InvalidTag:
        raise BlobCorrupt(cid, "failed authentication (damaged, swapped or another key)") from None
    if flags & FLAG_ZSTD:
        try:
            data = _decompressor().decompress(data)
        except zstandard.ZstdError as exc:
            raise BlobCorrupt(cid, f"does not decompress ({exc})") from None
    if chunk_id(keys, data) != cid:
        raise BlobCorrupt(cid, "content does not match its id")
    return data


__all__ = ["BLOB_OVERHEAD", "chunk_id", "open_blob", "seal", "seal_parts"]
