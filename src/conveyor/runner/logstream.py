"""The log path: output → timestamps → chunks (≤ max size, cut at least every interval) →
spool (memory, then disk) → parallel uploads.

Each chunk carries its `sequence` (from 1), its byte `offset` in the log and its `size`, so the
server can store it idempotently and assemble by offset whatever order uploads arrive in.
Every line of output starts with a timestamp marker (`conveyor.logformat`); markers are part
of the stored bytes.

Writing never waits for the server: when uploads fall behind (a slow or unreachable server),
chunks wait in the spool, on disk past its first few, so the job runs on with bounded memory.
The sink retries a chunk for as long as the server may come back; the streamer gives up only
at the flush deadline once the job has ended, and counts what it gave up as failed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Protocol

import anyio

from conveyor.logformat import Stamper, marker, now_ms, safe_cut
from conveyor.runner.spool import Chunk, Spool

log = logging.getLogger("conveyor.runner")

UPLOADERS = 3
QUEUED_CHUNKS = 2
"""Chunks waiting for upload in memory; more wait on disk."""
# Budget for the last uploads once the job has ended, even when the agent is stopping.
FLUSH_TIMEOUT_S = 15 * 60
MAX_LOG_SIZE = 1024**3
"""Bytes of log stored (timestamp markers included) past which output is dropped."""
TRUNCATED = (
    "conveyor: the log reached its maximum size of {} bytes; the rest of the output is not stored"
)

__all__ = ["FLUSH_TIMEOUT_S", "MAX_LOG_SIZE", "QUEUED_CHUNKS", "UPLOADERS", "Chunk", "LogSink",
           "LogStreamer"]  # fmt: skip


class LogSink(Protocol):
    async def upload_chunk(self, sequence: int, offset: int, data: bytes) -> object:
        """Store one chunk; retries are the sink's own business. Raises when it gives up."""


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
        max_log_size: int = MAX_LOG_SIZE,
        spool_dir: Path | None = None,
        clock: Callable[[], int] = now_ms,
    ):
        """`max_log_size`: bytes of log stored, markers included, before output is dropped;
        `spool_dir`: where chunks wait on disk (the system's temp directory by default);
        `clock`: milliseconds since the epoch, for the line markers."""
        if max_chunk_size <= 0:
            raise ValueError("max_chunk_size must be positive")
        if max_log_size <= 0:
            raise ValueError("max_log_size must be positive")
        self._sink = sink
        self._max = max_chunk_size
        self._interval = interval
        self._uploaders = uploaders
        self._flush_timeout = flush_timeout
        self._max_log_size = max_log_size
        self._clock = clock
        self._stamper = Stamper(clock)
        self._buffer = bytearray()
        self._lock = anyio.Lock()
        self._sequence = 0
        self._offset = 0
        self._settled = 0
        self._ends_line = True
        self.truncated = False
        """True once output was dropped for the maximum size."""
        self.bytes_written = 0
        """Bytes of output given to `write` (what the command wrote)."""
        self.log_size = 0
        """Bytes of log stored or to be stored: output, markers and notices."""
        self.chunks_failed_count = 0
        self.spool = Spool(queued_chunks, spool_dir)
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
        # cancelled. They end when the spool is closed and drained, or at the flush deadline.
        upload_scopes = [anyio.CancelScope(shield=True) for _ in range(self._uploaders)]
        done = anyio.Event()
        running = len(upload_scopes)

        async def uploader(scope: anyio.CancelScope) -> None:
            nonlocal running
            try:
                with scope:
                    await self._upload_loop()
            finally:
                running -= 1
                if running == 0:
                    done.set()

        async with anyio.create_task_group() as tg:
            for scope in upload_scopes:
                tg.start_soon(uploader, scope)
            tg.start_soon(self._tick)
            try:
                yield self
            finally:
                self._ticker_scope.cancel()
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(self._flush_timeout) as deadline:
                        try:
                            async with self._lock:
                                if not self.truncated:
                                    self._append(self._stamper.flush())
                                await self._emit(len(self._buffer))
                        finally:
                            self.spool.close()
                        await done.wait()
                    if deadline.cancelled_caught:
                        log.error("log upload did not finish within %ss", self._flush_timeout)
                        for scope in upload_scopes:
                            scope.cancel()
                        await done.wait()
                        # In flight or waiting in the spool, and never cut from the buffer.
                        lost = self._sequence - self._settled - self.spool.lost
                        lost += math.ceil(len(self._buffer) / self._max)
                        self.chunks_failed_count += lost
                    self.chunks_failed_count += self.spool.lost
                    await self.spool.aclose()

    async def write(self, data: bytes) -> None:
        async with self._lock:
            self.bytes_written += len(data)
            if self.truncated:
                return
            self._append(self._stamper.feed(data))
            if len(self._buffer) >= self._max:
                await self._emit(len(self._buffer) // self._max * self._max)

    def _append(self, stamped: bytes) -> None:
        """Buffer stamped output, up to the log's maximum size; past it, say so once."""
        if not stamped:
            return
        room = self._max_log_size - self.log_size
        if len(stamped) <= room:
            self._buffer += stamped
            self.log_size += len(stamped)
            self._ends_line = stamped.endswith(b"\n")
            return
        kept = stamped[: safe_cut(stamped, room)]
        self._buffer += kept
        if kept:
            self._ends_line = kept.endswith(b"\n")
        notice = b"" if self._ends_line else b"\r\n"
        notice += marker(self._clock()) + TRUNCATED.format(self._max_log_size).encode() + b"\r\n"
        self._buffer += notice
        self.log_size += len(kept) + len(notice)
        self.truncated = True
        log.warning("job log reached its maximum size of %d bytes", self._max_log_size)

    async def _emit(self, n: int) -> None:
        """Cut the first `n` buffered bytes into chunks of at most the max size, in order.

        A chunk leaves the buffer only once it is in the spool: a cancelled wait loses nothing.
        """
        while n > 0:
            size = min(n, self._max)
            chunk = Chunk(self._sequence + 1, self._offset, bytes(self._buffer[:size]))
            await self.spool.put(chunk)
            del self._buffer[:size]
            n -= size
            self._sequence += 1
            self._offset += size

    async def _tick(self) -> None:
        with self._ticker_scope:
            while True:
                await anyio.sleep(self._interval)
                async with self._lock:
                    await self._emit(len(self._buffer))

    async def _upload_loop(self) -> None:
        while (chunk := await self.spool.get()) is not None:
            try:
                await self._sink.upload_chunk(chunk.sequence, chunk.offset, chunk.data)
                self._settled += 1
            except Exception as exc:
                self._settled += 1
                # The sink retries what is worth retrying; the job goes on, and `finish`
                # reports the loss.
                self.chunks_failed_count += 1
                log.error(
                    "log chunk %d (%d bytes at offset %d) was not stored: %s",
                    chunk.sequence, len(chunk.data), chunk.offset, exc,
                )  # fmt: skip
            # Not held while waiting for the next one: each uploader would keep a chunk.
            del chunk
