"""LogStreamer: timestamps, chunking, the interval flush, the exit flush, failures, the disk
spool while uploads cannot keep up, bounded memory, the maximum log size."""

from __future__ import annotations

import itertools
import random
import time
import tracemalloc
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from conveyor.logformat import marker, strip
from conveyor.runner.logstream import QUEUED_CHUNKS, TRUNCATED, UPLOADERS, LogStreamer
from tests.runner.support import Chunk, FailingSink, GatedSink, RecordingSink

pytestmark = pytest.mark.anyio

NEVER = 3600.0  # an interval that does not elapse during a test
T0 = 1_733_470_000_123


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def lines(count: int, width: int = 99) -> bytes:
    """`count` numbered lines of `width` bytes and a newline each."""
    return b"".join(b"%08d " % i + b"x" * (width - 9) + b"\n" for i in range(count))


def clock(step: int = 1000) -> itertools.count[int]:
    return itertools.count(T0, step)


def streamer(sink: object, **kw: object) -> LogStreamer:
    """A streamer with a counting clock (T0, T0+1 s, ...), one reading per write."""
    kw.setdefault("clock", clock().__next__)
    return LogStreamer(sink, **kw)  # type: ignore[arg-type]


def stripped(sink: RecordingSink) -> bytes:
    """What a reader of the log gets by default: the output, without the markers."""
    return strip(sink.data)


# --- timestamps ------------------------------------------------------------------------------


async def test_every_line_is_stored_with_a_marker_of_when_it_started() -> None:
    sink = RecordingSink()
    async with streamer(sink, max_chunk_size=1000, interval=NEVER) as s:
        await s.write(b"one\r\ntw")  # clock: T0
        await s.write(b"o\r\n")  # T0 + 1 s, unused: the line had started
        await s.write(b"three\r\n")  # T0 + 2 s
    assert sink.data == (
        marker(T0) + b"one\r\n" + marker(T0) + b"two\r\n" + marker(T0 + 2000) + b"three\r\n"
    )
    assert s.bytes_written == len(b"one\r\ntwo\r\nthree\r\n")
    assert s.log_size == len(sink.data)


async def test_markers_count_in_offsets_and_a_marker_may_be_split_across_chunks() -> None:
    sink = RecordingSink()
    data = lines(200, width=30)
    async with streamer(sink, max_chunk_size=7, interval=NEVER) as s:
        await s.write(data)
    sink.assert_well_formed(max_chunk_size=7)
    assert stripped(sink) == data
    assert s.log_size == len(sink.data) == len(data) + 200 * len(marker(T0))


async def test_the_wall_clock_is_the_default() -> None:
    sink = RecordingSink()
    before = time.time_ns() // 1_000_000
    async with LogStreamer(sink, max_chunk_size=100, interval=NEVER) as s:
        await s.write(b"x\n")
    after = time.time_ns() // 1_000_000
    head, bel, rest = sink.data.partition(b"\x07")
    assert head.startswith(b"\x1b_ct;t=") and bel and rest == b"x\n"
    assert before <= int(head.removeprefix(b"\x1b_ct;t=")) <= after


# --- chunking --------------------------------------------------------------------------------


async def test_chunks_are_numbered_contiguous_and_at_most_max_size() -> None:
    sink = RecordingSink()
    data = payload(50_000)
    rng = random.Random(1)
    async with streamer(sink, max_chunk_size=1000, interval=NEVER) as s:
        pos = 0
        while pos < len(data):
            n = rng.choice([1, 7, 999, 1000, 1001, 2500, 4096])
            await s.write(data[pos : pos + n])
            pos += n
    sink.assert_well_formed(max_chunk_size=1000)
    assert stripped(sink) == data
    assert s.bytes_written == len(data)
    assert s.chunks_failed_count == 0
    # Without interval flushes, only the last chunk may be short.
    sizes = [len(c.data) for c in sink.ordered]
    assert sizes[:-1] == [1000] * (len(sizes) - 1) and 0 < sizes[-1] <= 1000


async def test_chunk_invariants_hold_when_interval_flushes_interleave() -> None:
    sink = RecordingSink()
    data = payload(30_000, seed=2)
    rng = random.Random(3)
    # interval=0: the ticker cuts whatever is buffered at every chance it gets.
    async with streamer(sink, max_chunk_size=512, interval=0) as s:
        pos = 0
        while pos < len(data):
            n = rng.randint(1, 1500)
            await s.write(data[pos : pos + n])
            pos += n
            await anyio.lowlevel.checkpoint()
        # The ticker alone sends it all (up to a held-back possible marker opening, at most
        # 4 bytes, settled by the exit).
        with anyio.fail_after(5):
            await sink.wait_for_size(s.log_size)
    sink.assert_well_formed(max_chunk_size=512)
    assert stripped(sink) == data
    assert any(len(c.data) < 512 for c in sink.ordered[:-1]), "no partial chunk was cut"


async def test_a_partial_buffer_is_sent_within_the_interval() -> None:
    sink = RecordingSink()
    interval = 0.2
    async with streamer(sink, max_chunk_size=1000, interval=interval) as s:
        written_at = anyio.current_time()
        await s.write(b"abc")
        with anyio.fail_after(5):
            await sink.wait_for_size(1)
        assert anyio.current_time() - written_at <= interval + 0.5
        first = marker(T0) + b"abc"
        assert sink.chunks == [Chunk(1, 0, first)]
        await s.write(b"de")
        with anyio.fail_after(5):
            await sink.wait_for_size(len(first) + 2)
        assert sink.ordered == [Chunk(1, 0, first), Chunk(2, len(first), b"de")]


async def test_a_full_chunk_is_sent_without_waiting_for_the_interval() -> None:
    sink = RecordingSink()
    stored = marker(T0) + b"x" * 250
    async with streamer(sink, max_chunk_size=100, interval=NEVER) as s:
        await s.write(b"x" * 250)
        with anyio.fail_after(5):
            await sink.wait_for_size(200)
        await anyio.wait_all_tasks_blocked()
        # The remainder waits for the interval (or the exit).
        assert sink.ordered == [Chunk(1, 0, stored[:100]), Chunk(2, 100, stored[100:200])]
    assert sink.ordered[-1] == Chunk(3, 200, stored[200:])


async def test_everything_is_flushed_at_exit() -> None:
    sink = RecordingSink()
    async with streamer(sink, max_chunk_size=1000, interval=NEVER) as s:
        await s.write(b"partial ")
        await s.write(b"line\r\n\x1b_c")  # ends with what may open a marker: held back
        await anyio.wait_all_tasks_blocked()
        assert sink.chunks == []  # below max size, before the interval: still buffered
    assert sink.chunks == [
        Chunk(1, 0, marker(T0) + b"partial line\r\n" + marker(T0 + 2000) + b"\x1b_c")
    ]


async def test_everything_is_flushed_when_the_body_raises() -> None:
    sink = RecordingSink()
    # The body runs inside the streamer's task group: its error may come out grouped.
    with pytest.RaisesGroup(ZeroDivisionError, allow_unwrapped=True):
        async with streamer(sink, max_chunk_size=1000, interval=NEVER) as s:
            await s.write(b"before the error")
            _ = 1 / 0
    assert stripped(sink) == b"before the error"


async def test_empty_log_sends_no_chunk() -> None:
    sink = RecordingSink()
    async with streamer(sink, max_chunk_size=1000, interval=0.01) as s:
        await s.write(b"")
    assert sink.chunks == []
    assert s.bytes_written == s.log_size == 0


@pytest.mark.parametrize("size", [0, -1])
async def test_max_chunk_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="max_chunk_size"):
        LogStreamer(RecordingSink(), max_chunk_size=size, interval=1)


@pytest.mark.parametrize("size", [0, -1])
async def test_max_log_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="max_log_size"):
        LogStreamer(RecordingSink(), max_chunk_size=10, interval=1, max_log_size=size)


# --- failures --------------------------------------------------------------------------------


async def test_refused_chunks_are_counted_and_the_others_still_arrive() -> None:
    sink = FailingSink(fail_sequences=frozenset({2, 5}))
    data = payload(800, seed=4)
    async with streamer(sink, max_chunk_size=100, interval=NEVER) as s:
        await s.write(data)
    stored = marker(T0) + data.replace(b"\n", b"\n" + marker(T0))
    assert s.chunks_failed_count == 2
    assert sorted(sink.refused) == [2, 5]
    count = -(-len(stored) // 100)
    assert sorted(c.sequence for c in sink.chunks) == sorted(set(range(1, count + 1)) - {2, 5})
    for chunk in sink.chunks:
        assert chunk.offset == (chunk.sequence - 1) * 100
        assert chunk.data == stored[chunk.offset : chunk.offset + 100]


async def test_first_failures_are_counted() -> None:
    sink = FailingSink(fail_first=3)
    async with streamer(sink, max_chunk_size=10, interval=NEVER) as s:
        await s.write(b"0123456789" * 10)  # one line: one marker, 21 bytes
    assert s.chunks_failed_count == 3
    assert len(sink.chunks) == 13 - 3


async def test_a_sink_that_always_fails_loses_every_chunk_but_the_exit_completes() -> None:
    sink = FailingSink(always=True)
    with anyio.fail_after(10):
        async with streamer(sink, max_chunk_size=10, interval=0) as s:
            for _ in range(20):
                await s.write(b"0123456789abc")
    assert sink.chunks == []
    assert s.chunks_failed_count == len(sink.refused) >= 26  # 260 bytes, ≤ 10 a chunk
    assert sorted(sink.refused) == list(range(1, len(sink.refused) + 1))


# --- the spool: the job never waits for the server -------------------------------------------


async def test_uploads_run_in_parallel_up_to_the_number_of_uploaders() -> None:
    sink = GatedSink()
    async with streamer(sink, max_chunk_size=10, interval=NEVER, uploaders=3) as s:
        await s.write(b"x" * 50)
        with anyio.fail_after(5):
            await sink.changes.wait_until(lambda: sink.in_flight == 3)
        await anyio.wait_all_tasks_blocked()
        assert sink.in_flight == 3
        sink.open()
    assert stripped(sink) == b"x" * 50


async def test_writes_go_on_while_the_sink_is_stuck_and_the_log_waits_on_disk(
    tmp_path: Path,
) -> None:
    sink = GatedSink()
    data = lines(1000)  # 100 kB, 1000 chunks of at most 100 bytes
    async with streamer(sink, max_chunk_size=100, interval=NEVER, spool_dir=tmp_path) as s:
        with anyio.fail_after(10):  # not one write waits for the stuck uploads
            for i in range(0, len(data), 100):
                await s.write(data[i : i + 100])
        await anyio.wait_all_tasks_blocked()
        chunks = s.log_size // 100
        assert sink.in_flight == UPLOADERS and sink.chunks == []
        assert s.spool.in_memory == QUEUED_CHUNKS
        assert s.spool.on_disk == chunks - QUEUED_CHUNKS - UPLOADERS
        assert s.spool.bytes_on_disk > 0
        # The file has no name: nothing is left in the directory, even if the agent dies.
        assert list(tmp_path.iterdir()) == []
        assert open_files_in(tmp_path) == 1
        sink.open()
    sink.assert_well_formed(max_chunk_size=100)
    assert stripped(sink) == data
    assert s.chunks_failed_count == 0
    assert s.spool.spilled == chunks - QUEUED_CHUNKS - UPLOADERS
    # The spool file is closed once the log is uploaded.
    assert open_files_in(tmp_path) == 0


def open_files_in(directory: Path) -> int:
    """How many of this process's open files are in `directory` (named or not)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += fd.readlink().parent == directory
        except OSError:
            continue  # the directory's own descriptor, closed while listing
    return count


async def test_chunks_are_uploaded_in_order_after_an_outage() -> None:
    sink = GatedSink()
    order: list[int] = []
    data = lines(300)
    async with streamer(sink, max_chunk_size=100, interval=NEVER, uploaders=1) as s:
        await s.write(data)
        await anyio.wait_all_tasks_blocked()
        assert s.spool.on_disk > 0
        sink.open()
        with anyio.fail_after(10):
            await sink.wait_for_size(s.log_size)
    order = [c.sequence for c in sink.chunks]
    assert order == sorted(order)  # memory first, then the file, oldest first
    assert stripped(sink) == data


async def test_memory_does_not_grow_with_the_log_while_the_sink_is_stuck() -> None:
    sink = GatedSink()
    size = 64 * 1024
    block = lines(size // 100)
    total = 20 * 1024 * 1024
    tracemalloc.start()
    try:
        async with streamer(sink, max_chunk_size=size, interval=NEVER) as s:
            tracemalloc.reset_peak()
            for _ in range(total // len(block)):
                await s.write(block)
            await anyio.wait_all_tasks_blocked()
            _, peak = tracemalloc.get_traced_memory()
            sink.open()
    finally:
        tracemalloc.stop()
    assert s.bytes_written >= total - len(block)
    assert s.spool.spilled > 250
    # Held in memory: the chunks in flight and in the spool's memory part (11 chunks of 64 KiB), the
    # buffer, and copies of a write and of a chunk on its way to the disk: a tenth of the log.
    assert peak < 2 * 1024 * 1024, peak


async def test_when_the_disk_fails_writes_wait_for_the_uploads_instead(tmp_path: Path) -> None:
    sink = GatedSink()
    data = lines(100)
    written = 0
    async with streamer(
        sink, max_chunk_size=100, interval=NEVER, spool_dir=tmp_path / "missing"
    ) as s:

        async def writer() -> None:
            nonlocal written
            for i in range(0, len(data), 100):
                await s.write(data[i : i + 100])
                written += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            assert written < 100, "the writes did not wait"
            assert s.spool.on_disk == 0 and s.spool.in_memory == QUEUED_CHUNKS
            sink.open()
    sink.assert_well_formed(max_chunk_size=100)
    assert stripped(sink) == data


# --- the exit flush under cancellation -------------------------------------------------------


async def test_exit_flush_happens_when_the_enclosing_scope_is_cancelled() -> None:
    sink = GatedSink()
    data = payload(25 * 100 + 42, seed=6)  # in flight, in memory, on disk and buffered

    async def open_when_all_blocked() -> None:
        await anyio.wait_all_tasks_blocked()
        sink.open()

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            async with streamer(sink, max_chunk_size=100, interval=NEVER) as s:
                await s.write(data)
                await anyio.wait_all_tasks_blocked()
                assert sink.chunks == [] and s.spool.on_disk > 0
                tg.start_soon(open_when_all_blocked)
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
    assert stripped(sink) == data
    sink.assert_well_formed(max_chunk_size=100)


async def test_cancelling_a_write_waiting_for_room_loses_no_byte(tmp_path: Path) -> None:
    sink = GatedSink()
    data = lines(30)  # more than the uploaders and the memory hold; no disk to spill to

    async def open_when_all_blocked() -> None:
        await anyio.wait_all_tasks_blocked()
        sink.open()

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            async with (
                streamer(
                    sink, max_chunk_size=100, interval=NEVER, spool_dir=tmp_path / "missing"
                ) as s,
                anyio.create_task_group() as writers,
            ):
                writers.start_soon(s.write, data)
                await anyio.wait_all_tasks_blocked()  # the write waits for room
                tg.start_soon(open_when_all_blocked)
                scope.cancel()
    # Every byte the streamer took reaches the sink.
    assert sink.size == s.log_size
    assert stripped(sink) == data
    sink.assert_well_formed(max_chunk_size=100)


# --- the flush deadline ----------------------------------------------------------------------


async def test_exit_gives_up_at_the_flush_timeout() -> None:
    sink = GatedSink()  # never opened
    timeout = 0.3
    started = anyio.current_time()
    with anyio.fail_after(10):
        async with streamer(sink, max_chunk_size=10, interval=NEVER, flush_timeout=timeout) as s:
            await s.write(b"x" * 55)
    assert timeout - 0.05 <= anyio.current_time() - started < timeout + 2
    assert sink.chunks == []
    assert sink.in_flight == 0  # the stuck uploads were cancelled, not left behind


async def test_chunks_abandoned_at_the_flush_timeout_are_counted_as_failed() -> None:
    sink = GatedSink()  # never opened
    with anyio.fail_after(10):
        async with streamer(sink, max_chunk_size=10, interval=NEVER, flush_timeout=0.3) as s:
            await s.write(b"x" * 55)  # 76 bytes with the marker: 8 chunks
            await s.write(b"y" * 100)  # 10 more, most of them on disk
    assert sink.chunks == []
    assert s.spool.spilled > 0
    assert s.chunks_failed_count == 18


# --- the maximum log size --------------------------------------------------------------------


def notice(size: int) -> bytes:
    return TRUNCATED.format(size).encode() + b"\r\n"


async def test_output_past_the_maximum_size_is_dropped_with_one_notice() -> None:
    sink = RecordingSink()
    data = lines(50)  # 5000 bytes, 50 markers
    async with streamer(sink, max_chunk_size=100, interval=NEVER, max_log_size=1000) as s:
        for i in range(0, len(data), 100):
            await s.write(data[i : i + 100])  # the job goes on writing: no error, no wait
        assert s.truncated
        await s.write(b"more\n")
    sink.assert_well_formed(max_chunk_size=100)
    assert s.bytes_written == len(data) + 5
    out = stripped(sink)
    kept, _, _ = out.partition(b"\r\nconveyor: the log reached")
    assert data.startswith(kept) and len(kept) > 800
    assert out.endswith(notice(1000)) and out.count(b"maximum size") == 1
    assert len(sink.data) <= 1000 + len(b"\r\n" + marker(T0) + notice(1000))
    assert s.log_size == len(sink.data)


@pytest.mark.parametrize("limit", range(1, 90))
async def test_the_cut_never_splits_a_marker(limit: int) -> None:
    sink = RecordingSink()
    async with streamer(sink, max_chunk_size=1000, interval=NEVER, max_log_size=limit) as s:
        await s.write(b"ab\n\x1b_ct;\n")
        await s.write(b"cd\ne")
        await s.write(b"f\n")
    out = stripped(sink)
    kept = out.removesuffix(notice(limit)).removesuffix(b"\r\n")
    assert out.endswith(notice(limit))
    assert b"ab\n\x1b_ct;\ncd\nef\n".startswith(kept)
    # What remains holds whole markers only: stripping leaves no piece of one.
    assert b"\x1b_ct;t=" not in out and b"\x07" not in out


async def test_a_log_that_fits_gets_no_notice() -> None:
    sink = RecordingSink()
    data = b"exactly\n"
    size = len(marker(T0) + data)
    async with streamer(sink, max_chunk_size=100, interval=NEVER, max_log_size=size) as s:
        await s.write(data)
    assert sink.data == marker(T0) + data and not s.truncated
