"""The queue of log chunks waiting for upload: the oldest in memory, the rest on disk.

While the server is slow or away, chunks keep coming (the job keeps running) but leave at
the pace uploads succeed. The first `memory_chunks` wait in memory; past that, chunks are
appended to a temporary file and read back in order as uploads catch up, so memory use does
not grow with the log, however long the server is away. The file is created only when it is
first needed, is unnamed (removed by the system even if the agent is killed), and is emptied
whenever every chunk in it has been taken.

If the disk refuses a write (full, no temp directory), `put` falls back to waiting for room in
memory, as a blocking pipe would: the job's output slows down but nothing is lost.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread

log = logging.getLogger("conveyor.runner")

# sequence, offset, size: each record on disk is this header and then the chunk's bytes.
_HEADER = struct.Struct("<QQI")


@dataclass(frozen=True)
class Chunk:
    sequence: int
    offset: int
    data: bytes


class Spool:
    """A FIFO of chunks for any number of consumers; `close()` ends it once drained.

    `put` never waits for consumers (only, when the disk fails, for memory room). Chunks come
    out in the order they went in.
    """

    def __init__(self, memory_chunks: int, directory: Path | None = None) -> None:
        if memory_chunks < 1:
            raise ValueError("memory_chunks must be at least 1")
        self._capacity = memory_chunks
        self._directory = directory
        self._memory: deque[Chunk] = deque()
        self._file: BinaryIO | None = None
        self._write_pos = 0
        self._read_pos = 0
        self.on_disk = 0
        """Chunks waiting in the file."""
        self.spilled = 0
        """Chunks that went through the file, in all."""
        self.lost = 0
        """Chunks written to the file that could not be read back."""
        self._disk_failed = False
        self._closed = False
        self._changed = anyio.Event()
        # One user of the file at a time: a write, or a read and the emptying that may follow.
        self._file_lock = anyio.Lock()

    @property
    def in_memory(self) -> int:
        return len(self._memory)

    @property
    def bytes_on_disk(self) -> int:
        """The length of the file in use (0 once every chunk in it was taken)."""
        return self._write_pos

    def __len__(self) -> int:
        return len(self._memory) + self.on_disk

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _memory_has_room(self) -> bool:
        # Once chunks are on disk, newer ones go there too, behind them: order is kept.
        return self.on_disk == 0 and len(self._memory) < self._capacity

    async def put(self, chunk: Chunk) -> None:
        """Queue `chunk`. If cancelled, the chunk was not queued (nothing else happened)."""
        if self._closed:
            raise RuntimeError("put on a closed spool")
        while not self._memory_has_room():
            if not self._disk_failed:
                # Shielded: once on disk, the chunk is queued, and the caller must hear so.
                with anyio.CancelScope(shield=True):
                    written = await self._spill(chunk)
                if written:
                    return
                continue
            await self._changed.wait()
        self._memory.append(chunk)
        self._notify()

    async def _spill(self, chunk: Chunk) -> bool:
        try:
            async with self._file_lock:
                self._write_pos += await anyio.to_thread.run_sync(
                    self._write, chunk, self._write_pos
                )
        except OSError as exc:
            self._disk_failed = True
            log.error(
                "cannot keep the log on disk (%s): the job's output waits for the uploads", exc
            )
            return False
        self.on_disk += 1
        self.spilled += 1
        self._notify()
        return True

    def _write(self, chunk: Chunk, position: int) -> int:
        if self._file is None:
            # Kept open for the spool's life (closed by aclose); unnamed, so never left behind.
            self._file = tempfile.TemporaryFile(prefix="conveyor-log-", dir=self._directory)  # noqa: SIM115
        record = _HEADER.pack(chunk.sequence, chunk.offset, len(chunk.data)) + chunk.data
        written = os.pwrite(self._file.fileno(), record, position)
        if written != len(record):
            raise OSError(f"short write ({written} of {len(record)} bytes)")
        return written

    async def get(self) -> Chunk | None:
        """The oldest chunk; waits for one. None once closed and empty."""
        while True:
            if self._memory:
                chunk = self._memory.popleft()
                self._notify()  # a put waiting for memory room may go on
                return chunk
            if self.on_disk:
                async with self._file_lock:
                    if self._memory or not self.on_disk:
                        continue
                    # Shielded: a chunk taken from the file must reach the caller.
                    with anyio.CancelScope(shield=True):
                        read = await self._take_from_disk()
                    if read is not None:
                        return read
                    continue
            if self._closed:
                return None
            await self._changed.wait()

    async def _take_from_disk(self) -> Chunk | None:
        try:
            chunk, size = await anyio.to_thread.run_sync(self._read, self._read_pos)
        except OSError as exc:
            log.error("the log kept on disk cannot be read back (%s): %d chunks lost",
                      exc, self.on_disk)  # fmt: skip
            self.lost += self.on_disk
            self.on_disk = 0
            await self._empty_file()
            return None
        self._read_pos += size
        self.on_disk -= 1
        if self.on_disk == 0:
            await self._empty_file()
        self._notify()
        return chunk

    def _read(self, position: int) -> tuple[Chunk, int]:
        assert self._file is not None
        fd = self._file.fileno()
        header = os.pread(fd, _HEADER.size, position)
        if len(header) != _HEADER.size:
            raise OSError("the log spool is shorter than what was written to it")
        sequence, offset, size = _HEADER.unpack(header)
        data = os.pread(fd, size, position + _HEADER.size)
        if len(data) != size:
            raise OSError("the log spool is shorter than what was written to it")
        return Chunk(sequence, offset, data), _HEADER.size + size

    async def _empty_file(self) -> None:
        """Every chunk in the file was taken: give its space back and start it over.
        Called with the file lock held."""
        self._read_pos = self._write_pos = 0
        if self._file is not None:
            try:
                await anyio.to_thread.run_sync(os.ftruncate, self._file.fileno(), 0)
            except OSError as exc:
                log.warning("cannot empty the log spool: %s", exc)

    def close(self) -> None:
        """No more puts: consumers get None once the queue is drained."""
        self._closed = True
        self._notify()

    async def aclose(self) -> None:
        """Remove the file; chunks still in it are dropped (the caller counts them)."""
        self.close()
        if self._file is not None:
            file, self._file = self._file, None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(file.close)
