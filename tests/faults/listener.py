"""A loopback TCP listener on an asyncio loop of its own thread, for the fault suite's
proxies: a test drives it from plain code, and each connection runs `serve` until it ends
or the listener stops. Also the pieces a proxy is made of: forwarding one direction,
passing its end on, running both directions, and a TCP reset."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

READ_SIZE = 65536


class LoopThread:
    """An asyncio loop running on its own thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        # Broken connections are the point here: nothing to report about them.
        self.loop.set_exception_handler(lambda _loop, _context: None)
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


class Listener:
    """A loopback listener whose connections run `serve` until they end or it stops."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._runner: LoopThread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._runner = LoopThread(type(self).__name__)
        self._server = self._runner.call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._runner is None:
            return
        self._runner.call(self._shutdown())
        self._runner.close()
        self._runner = None

    def call_soon(self, callback: Callable[[], object]) -> None:
        assert self._runner is not None
        self._runner.loop.call_soon_threadsafe(callback)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.serve(self.connections, reader, writer)
        except (OSError, ssl.SSLError, EOFError, asyncio.IncompleteReadError):
            pass  # the other side went away: the end of this connection, nothing more
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    async def serve(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One connection, `number` counting from 1; it is aborted when this returns."""
        raise NotImplementedError


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (RST), as a crashed peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def both(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run both directions of a connection; when one fails, the other is cancelled."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def forward(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    inspect: Callable[[bytes], None] | None = None,
) -> None:
    """Copy one direction until its end, then end it on the other side too."""
    while data := await reader.read(READ_SIZE):
        if inspect is not None:
            inspect(data)
        writer.write(data)
        await writer.drain()
    end(writer)


def end(writer: asyncio.StreamWriter) -> None:
    """Pass an end of stream on: a half-close over TCP; over TLS, which has none, a close
    (a relay must not leave its client waiting on a server that went away)."""
    if writer.can_write_eof():
        writer.write_eof()
    else:
        writer.close()


__all__ = ["READ_SIZE", "Listener", "LoopThread", "both", "end", "forward", "reset"]
