"""A TLS-terminating relay for the fault suite, with the certificate it is given.

With the authority's own certificate and key it is a transparent relay that can hold back
the answer to a chosen request while the test kills the authority; with another
certificate, and no authority behind it, it is a man in the middle that records every
decrypted byte it receives (and answers a request, should one come, with a 502).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from tests.faults.listener import READ_SIZE, Listener, both, end, forward

NO_UPSTREAM = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class TlsRelay(Listener):
    """Terminates TLS with `certificate`/`key`; relays to the authority at `upstream_port`,
    or, without one, only records what it receives (a man in the middle).

    `received` holds every decrypted byte clients sent; `handshakes` counts completed TLS
    handshakes; `requests` the request lines relayed.
    """

    def __init__(self, certificate: Path, key: Path, upstream_port: int | None = None) -> None:
        super().__init__()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, key)
        self.upstream_port = upstream_port
        self.handshakes = 0
        self.received = bytearray()
        self.requests: list[str] = []
        self.holding = threading.Event()
        self._hold: Callable[[str], bool] | None = None
        self._held: list[asyncio.StreamWriter] = []

    def hold_answer(self, matches: Callable[[str], bool]) -> None:
        """Relay the next request whose request line `matches`, but never its answer (nor
        anything after it on that connection); `holding` is set once it is relayed."""
        self.holding.clear()
        self._hold = matches

    def release(self) -> None:
        """Drop the connections whose answer is held: the client sees its request fail."""

        def drop() -> None:
            for writer in self._held:
                writer.transport.abort()
            self._held.clear()

        self.call_soon(drop)

    async def serve(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await writer.start_tls(self.context)
        self.handshakes += 1
        if self.upstream_port is None:
            while data := await reader.read(READ_SIZE):
                self.received += data
                if b"\r\n\r\n" in self.received:  # a whole request head: say so, hang up
                    writer.write(NO_UPSTREAM)
                    writer.close()
                    await writer.wait_closed()
                    return
            return
        upstream = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        upstream.check_hostname = False
        upstream.verify_mode = ssl.CERT_NONE  # the authority, on loopback, behind the test
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self.upstream_port, ssl=upstream
        )
        requests = _RequestReader()
        held = False

        def from_client(data: bytes) -> None:
            nonlocal held
            self.received += data
            for line in requests.feed(data):
                self.requests.append(line)
                if self._hold is not None and self._hold(line):
                    self._hold = None
                    held = True
                    self._held.append(writer)
                    self.holding.set()

        async def to_client() -> None:
            while data := await up_reader.read(READ_SIZE):
                if not held:
                    writer.write(data)
                    await writer.drain()
            if not held:  # a held answer ends only by `release`
                end(writer)

        try:
            await both(forward(reader, up_writer, from_client), to_client())
        finally:
            up_writer.transport.abort()


class _RequestReader:
    """The request lines of an HTTP/1.1 client stream (bodies framed by Content-Length)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._body_left = 0

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        while data:
            if self._body_left:
                step = min(self._body_left, len(data))
                self._body_left -= step
                data = data[step:]
                continue
            self._buffer += data
            data = b""
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head, data = self._buffer[:head_end], self._buffer[head_end + 4 :]
            self._buffer = b""
            lines.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
            for header in head.split(b"\r\n")[1:]:
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    self._body_left = int(value.strip())
        return lines


__all__ = ["TlsRelay"]
