"""The log path: output → chunks (≤ max size, cut at least every interval) → parallel uploads.

Each chunk carries its `sequence` (from 1), its byte `offset` in the log and its `size`, so the
server can store it idempotently and assemble by offset whatever order uploads arrive in.
Memory stays bounded whatever the log's size: when uploads fall behind, the queue fills,
`write` waits, and so does the process writing into the terminal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

log = logging.getLogger("conveyor.runner")

UPLOADERS = 3
QUEUED_CHUNKS = 8
# Budget for the last uploads once the job has ended, even when the agent is stopping.
FLUSH_TIMEOUT_S = 15 * 60


class LogSink(Protocol):
    async def upload_chunk(self, sequence: int, offset: int, data: bytes) -> object:
        """Store one chunk; retries are the sink's own business. Raises when it gives up."""


@dataclass(frozen=True)
class Chunk:
    sequence: int
    offset: int
    data: bytes


class LogStreamer:
    """`async with LogStreamer(sink, ...) as s: await s.write(data)`; exit uploads the rest."""

    def __init__(
        self,
        sink: LogSink,
        *,
        max_chunk_size: int,
        interval: float,
        uploaders: int = UPLOADERS,
        queued_chunks: int = QUEUED_CHUNKS,
        flush_timeout: float = FLUSH_TIMEOUT_S,
    ):
        if max_chunk_size <= 0:
            raise ValueError("max_chunk_size must be positive")
        self._sink = sink
        self._max = max_chunk_size
        self._interval = interval
        self._uploaders = uploaders
        self._flush_timeout = flush_timeout
        self._buffer = bytearray()
        self._lock = anyio.Lock()
        self._sequence = 0
        self.bytes_written = 0
        self.chunks_failed_count = 0
        # The queue itself is unbounded; the slots bound it (queued + being uploaded), and
        # waiting for a slot is the only wait in _emit, so a cancelled wait loses nothing.
        send, receive = anyio.create_memory_object_stream[Chunk](math.inf)
        self._slots = anyio.Semaphore(queued_chunks + uploaders)
        self._offset = 0
        self._settled = 0
        self._send: MemoryObjectSendStream[Chunk] = send
        self._receive: MemoryObjectReceiveStream[Chunk] = receive
        self._ticker_scope = anyio.CancelScope()

    async def __aenter__(self) -> LogStreamer:
        self._cm = self._open()
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._cm.__aexit__(exc_type, exc, tb)

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[LogStreamer]:
        # Uploaders run shielded: the log must reach the server even when the job is being
        # cancelled. They end when the queue is closed and drained, or at the flush deadline.
        upload_scopes = [anyio.CancelScope(shield=True) for _ in range(self._uploaders)]
        done = anyio.Event()
        running = len(upload_scopes)

        async def uploader(
            scope: anyio.CancelScope, chunks: MemoryObjectReceiveStream[Chunk]
        ) -> None:
            nonlocal running
            try:
                with scope:
                    await self._upload_loop(chunks)
            finally:
                running -= 1
                if running == 0:
                    done.set()

        async with anyio.create_task_group() as tg:
            for scope in upload_scopes:
                tg.start_soon(uploader, scope, self._receive.clone())
            self._receive.close()
            tg.start_soon(self._tick)
            try:
                yield self
            finally:
                self._ticker_scope.cancel()
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(self._flush_timeout) as deadline:
                        try:
                            async with self._lock:
                                await self._emit(len(self._buffer))
                        finally:
                            self._send.close()
                        await done.wait()
                    if deadline.cancelled_caught:
                        log.error("log upload did not finish within %ss", self._flush_timeout)
                        for scope in upload_scopes:
                            scope.cancel()
                        await done.wait()
                        lost = self._sequence - self._settled
                        lost += math.ceil(len(self._buffer) / self._max)
                        self.chunks_failed_count += lost

    async def write(self, data: bytes) -> None:
        async with self._lock:
            self._buffer += data
            self.bytes_written += len(data)
            if len(self._buffer) >= self._max:
                await self._emit(len(self._buffer) // self._max * self._max)

    async def _emit(self, n: int) -> None:
        """Cut the first `n` buffered bytes into chunks of at most the max size, in order."""
        while n > 0:
            size = min(n, self._max)
            await self._slots.acquire()
            piece = bytes(self._buffer[:size])
            del self._buffer[:size]
            n -= size
            self._sequence += 1
            self._send.send_nowait(Chunk(self._sequence, self._offset, piece))
            self._offset += size

    async def _tick(self) -> None:
        with self._ticker_scope:
            while True:
                await anyio.sleep(self._interval)
                async with self._lock:
                    await self._emit(len(self._buffer))

    async def _upload_loop(self, chunks: MemoryObjectReceiveStream[Chunk]) -> None:
        async with chunks:
            async for chunk in chunks:
                try:
                    await self._sink.upload_chunk(chunk.sequence, chunk.offset, chunk.data)
                    self._settled += 1
                except Exception as exc:
                    self._settled += 1
                    # The sink already retried; the job goes on and `finish` reports the loss.
                    self.chunks_failed_count += 1
                    log.error(
                        "log chunk %d (%d bytes at offset %d) was not stored: %s",
                        chunk.sequence, len(chunk.data), chunk.offset, exc,
                    )  # fmt: skip
                finally:
                    self._slots.release()
