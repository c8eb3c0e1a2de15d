"""A TCP proxy between the agent and the authority that breaks the connections its plan
names, for the fault suite:

    Drop()                  accepted, then closed before a byte is read
    Stall(seconds)          the server's first bytes (its handshake) held back that long
    Truncate(records, extra)  once the client has sent its request, that many whole TLS
                            records of the server's stream and `extra` bytes of the next,
                            then the connection is closed
    ResetTls(after)         `after` bytes of the server's handshake, then a TCP reset
    Hang(after)             once the client has sent `after` bytes, nothing more of the
                            server's reaches it, and its connection stays open (a peer that
                            vanished without closing: a laptop that changed networks)

It sees TLS records, never plaintext: the request is the first application-data record
from the client that is larger than any TLS Finished message. (`relay.py` terminates TLS.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.faults.listener import READ_SIZE, Listener, both, end, forward, reset

APPLICATION_DATA = 23
# A TLS 1.3 Finished record is at most 69 bytes (SHA-384); every request is larger.
LARGEST_FINISHED = 100


@dataclass(frozen=True)
class Drop:
    """Accept the connection, then close it before reading a byte."""


@dataclass(frozen=True)
class Stall:
    """Hold the server's first bytes (the start of its handshake) back for `seconds`."""

    seconds: float


@dataclass(frozen=True)
class Truncate:
    """After the client's request: `records` whole TLS records of the server, `extra`
    bytes of the next one, then close."""

    records: int
    extra: int


@dataclass(frozen=True)
class ResetTls:
    """Forward `after` bytes of the server's handshake, then reset the connection."""

    after: int


@dataclass(frozen=True)
class Hang:
    """Once the client has sent `after` bytes, pass nothing more of the server's to it, and
    keep its connection open, even after the server closes its side."""

    after: int


Fault = Drop | Stall | Truncate | ResetTls | Hang
Plan = Callable[[int], Fault | None]  # connection number (from 1) -> its fault, if any


@dataclass(frozen=True)
class Record:
    start: int  # offset of its header in its direction of the stream
    kind: int
    length: int

    @property
    def end(self) -> int:
        return self.start + 5 + self.length


@dataclass
class RecordReader:
    """Finds the TLS records in one direction of a connection, from their headers only."""

    offset: int = 0
    _head: bytes = b""
    _skip: int = 0

    def feed(self, data: bytes) -> list[Record]:
        found: list[Record] = []
        view = memoryview(data)
        while view:
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
            else:
                step = min(5 - len(self._head), len(view))
                self._head += bytes(view[:step])
                if len(self._head) == 5:
                    length = int.from_bytes(self._head[3:5], "big")
                    found.append(Record(self.offset + step - 5, self._head[0], length))
                    self._head, self._skip = b"", length
            self.offset += step
            view = view[step:]
        return found


@dataclass
class _Connection:
    fault: Fault | None
    request_at: int | None = None  # where the server's stream was when the request came
    client_bytes: int = 0
    server: RecordReader = field(default_factory=RecordReader)
    client: RecordReader = field(default_factory=RecordReader)


class FaultProxy(Listener):
    """A TCP proxy to `upstream_port` that breaks the connections `plan` names.

    `upstream_port` may be changed while it runs: new connections go there.
    `applied` lists the faults carried out, as `N: fault`.
    """

    def __init__(self, upstream_port: int, plan: Plan | None = None) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.plan: Plan = plan or (lambda _number: None)
        self.applied: list[str] = []

    async def serve(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        fault = self.plan(number)
        if isinstance(fault, Drop):
            self.applied.append(f"{number}: {fault}")
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        connection = _Connection(fault)
        try:
            await both(
                forward(reader, up_writer, lambda data: self._from_client(connection, data)),
                self._to_client(number, connection, up_reader, writer),
            )
        finally:
            up_writer.transport.abort()

    def _from_client(self, connection: _Connection, data: bytes) -> None:
        connection.client_bytes += len(data)
        for record in connection.client.feed(data):
            if (
                connection.request_at is None
                and record.kind == APPLICATION_DATA
                and record.length > LARGEST_FINISHED
            ):
                connection.request_at = connection.server.offset

    async def _to_client(
        self,
        number: int,
        connection: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        fault = connection.fault
        records: list[Record] = []
        hung = False
        while data := await reader.read(READ_SIZE):
            if isinstance(fault, Hang) and connection.client_bytes > fault.after:
                if not hung:
                    hung = True
                    self.applied.append(f"{number}: {fault}")
                continue  # read and dropped: the server is not held up, the client is
            position = connection.server.offset
            records += connection.server.feed(data)
            if isinstance(fault, Stall) and position == 0:
                self.applied.append(f"{number}: {fault}")
                await asyncio.sleep(fault.seconds)
            cut = self._cut(fault, connection, records)
            if cut is not None and cut < position + len(data):
                writer.write(data[: max(0, cut - position)])
                await writer.drain()
                self.applied.append(f"{number}: {fault}")
                if isinstance(fault, ResetTls):
                    reset(writer)
                else:
                    writer.close()
                return
            writer.write(data)
            await writer.drain()
        if hung:
            await asyncio.Event().wait()  # open until the proxy stops: no end reaches it
        end(writer)

    @staticmethod
    def _cut(fault: Fault | None, connection: _Connection, records: list[Record]) -> int | None:
        """The offset of the server's stream where this connection is cut, once known."""
        if isinstance(fault, ResetTls):
            return fault.after
        if not isinstance(fault, Truncate) or connection.request_at is None:
            return None
        if fault.records == 0:
            return connection.request_at + fault.extra
        answer = [r for r in records if r.start >= connection.request_at]
        if len(answer) < fault.records:
            return None
        return answer[fault.records - 1].end + fault.extra


__all__ = [
    "Drop",
    "Fault",
    "FaultProxy",
    "Hang",
    "Plan",
    "Record",
    "RecordReader",
    "ResetTls",
    "Stall",
    "Truncate",
]
