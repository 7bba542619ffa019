"""Helpers for the runner tests: in-memory log sinks, an output collector, process checks.

The sinks implement `LogSink`, the runner's injection seam; they are small real sinks that keep
chunks in memory, not mocks of our code. Waiting is event driven throughout: a collector wakes
its waiters whenever something arrives.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import anyio


class Changes:
    """Wakes every waiter each time `notify` is called; `wait_until(predicate)` builds on it."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


@dataclass(frozen=True)
class Chunk:
    sequence: int
    offset: int
    data: bytes


class RecordingSink:
    """Stores every chunk it is given; `upload_chunk` returns at once."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.calls = 0
        self.changes = Changes()

    async def upload_chunk(self, sequence: int, offset: int, data: bytes) -> object:
        self.calls += 1
        await self._before_store(sequence)
        self.chunks.append(Chunk(sequence, offset, bytes(data)))
        self.changes.notify()
        return None

    async def _before_store(self, sequence: int) -> None:
        """Hook for the variants: wait, or raise to refuse the chunk."""

    @property
    def ordered(self) -> list[Chunk]:
        return sorted(self.chunks, key=lambda c: c.sequence)

    @property
    def data(self) -> bytes:
        """The log as the server would assemble it: the chunks by offset."""
        return b"".join(c.data for c in sorted(self.chunks, key=lambda c: c.offset))

    @property
    def size(self) -> int:
        return sum(len(c.data) for c in self.chunks)

    async def wait_for_size(self, n: int) -> None:
        await self.changes.wait_until(lambda: self.size >= n)

    def assert_well_formed(self, max_chunk_size: int) -> None:
        """Sequences 1..n, each offset = bytes before it, sizes in (0, max], no overlap."""
        chunks = self.ordered
        assert [c.sequence for c in chunks] == list(range(1, len(chunks) + 1))
        offset = 0
        for chunk in chunks:
            assert chunk.offset == offset, chunk
            assert 0 < len(chunk.data) <= max_chunk_size, chunk
            offset += len(chunk.data)


class GatedSink(RecordingSink):
    """Every upload waits until `open()` (backpressure you control); `in_flight` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.in_flight = 0

    def open(self) -> None:
        self.gate.set()

    async def _before_store(self, sequence: int) -> None:
        self.in_flight += 1
        self.changes.notify()
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1


class SinkError(Exception):
    pass


class FailingSink(RecordingSink):
    """Refuses chunks: those with a sequence in `fail_sequences`, the first `fail_first`
    calls, or every chunk when `always` — like a sink that has given up retrying."""

    def __init__(
        self,
        *,
        fail_sequences: frozenset[int] = frozenset(),
        fail_first: int = 0,
        always: bool = False,
    ) -> None:
        super().__init__()
        self.fail_sequences = fail_sequences
        self.fail_first = fail_first
        self.always = always
        self.refused: list[int] = []

    async def _before_store(self, sequence: int) -> None:
        if self.always or sequence in self.fail_sequences or self.calls <= self.fail_first:
            self.refused.append(sequence)
            self.changes.notify()
            raise SinkError(f"chunk {sequence} refused")


class Output:
    """An `on_output` callback that keeps every byte and lets tests wait for a marker."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.calls = 0
        self.changes = Changes()

    async def __call__(self, data: bytes) -> None:
        self.data += data
        self.calls += 1
        self.changes.notify()

    async def wait_for(self, marker: bytes) -> None:
        await self.changes.wait_until(lambda: marker in self.data)

    def line_after(self, marker: bytes) -> bytes:
        """The rest of the line that starts with `marker` (e.g. a printed pid)."""
        start = self.data.index(marker) + len(marker)
        end = self.data.index(b"\n", start)
        return bytes(self.data[start:end]).strip()


async def process_gone(pid: int) -> bool:
    """True once `pid` has exited (no /proc entry, or a zombie nobody has reaped yet)."""
    try:
        stat = await anyio.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # The state follows the command name, which is in parentheses and may contain spaces.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("Z", "X")


async def wait_gone(pid: int, timeout: float = 5.0) -> None:
    """Wait, bounded, for another process to die: polling /proc is the only way to watch a
    process that is not our child."""
    with anyio.fail_after(timeout):
        while not await process_gone(pid):
            await anyio.sleep(0.01)


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def base_env(**extra: str) -> dict[str, str]:
    """A minimal environment for a child: PATH (to find the tools) and what the test adds."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", **extra}
