"""LogStreamer: chunking, the interval flush, the exit flush, failures, bounded memory."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import pytest

from conveyor.runner.logstream import QUEUED_CHUNKS, UPLOADERS, LogStreamer
from tests.runner.support import Chunk, FailingSink, GatedSink, RecordingSink

pytestmark = pytest.mark.anyio

NEVER = 3600.0  # an interval that does not elapse during a test


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# --- chunking --------------------------------------------------------------------------------


async def test_chunks_are_numbered_contiguous_and_at_most_max_size() -> None:
    sink = RecordingSink()
    data = payload(50_000)
    rng = random.Random(1)
    async with LogStreamer(sink, max_chunk_size=1000, interval=NEVER) as streamer:
        pos = 0
        while pos < len(data):
            n = rng.choice([1, 7, 999, 1000, 1001, 2500, 4096])
            await streamer.write(data[pos : pos + n])
            pos += n
    sink.assert_well_formed(max_chunk_size=1000)
    assert sink.data == data
    assert streamer.bytes_written == len(data)
    assert streamer.chunks_failed_count == 0
    # Without interval flushes, only the last chunk may be short.
    assert [len(c.data) for c in sink.ordered] == [1000] * 50


async def test_chunk_invariants_hold_when_interval_flushes_interleave() -> None:
    sink = RecordingSink()
    data = payload(30_000, seed=2)
    rng = random.Random(3)
    # interval=0: the ticker cuts whatever is buffered at every chance it gets.
    async with LogStreamer(sink, max_chunk_size=512, interval=0) as streamer:
        pos = 0
        while pos < len(data):
            n = rng.randint(1, 1500)
            await streamer.write(data[pos : pos + n])
            pos += n
            await anyio.lowlevel.checkpoint()
        # The ticker alone sends it all (leaving the exit nothing to race with; that race is
        # test_exit_while_the_interval_flush_waits_for_queue_space_loses_no_byte).
        with anyio.fail_after(5):
            await sink.wait_for_size(len(data))
    sink.assert_well_formed(max_chunk_size=512)
    assert sink.data == data
    assert any(len(c.data) < 512 for c in sink.ordered[:-1]), "no partial chunk was cut"


async def test_a_partial_buffer_is_sent_within_the_interval() -> None:
    sink = RecordingSink()
    interval = 0.2
    async with LogStreamer(sink, max_chunk_size=1000, interval=interval) as streamer:
        written_at = anyio.current_time()
        await streamer.write(b"abc")
        with anyio.fail_after(5):
            await sink.wait_for_size(3)
        assert anyio.current_time() - written_at <= interval + 0.5
        assert sink.chunks == [Chunk(1, 0, b"abc")]
        await streamer.write(b"de")
        with anyio.fail_after(5):
            await sink.wait_for_size(5)
        assert sink.ordered == [Chunk(1, 0, b"abc"), Chunk(2, 3, b"de")]


async def test_a_full_chunk_is_sent_without_waiting_for_the_interval() -> None:
    sink = RecordingSink()
    async with LogStreamer(sink, max_chunk_size=100, interval=NEVER) as streamer:
        await streamer.write(b"x" * 250)
        with anyio.fail_after(5):
            await sink.wait_for_size(200)
        await anyio.wait_all_tasks_blocked()
        # The 50-byte remainder waits for the interval (or the exit).
        assert sink.ordered == [Chunk(1, 0, b"x" * 100), Chunk(2, 100, b"x" * 100)]
    assert sink.ordered[-1] == Chunk(3, 200, b"x" * 50)


async def test_everything_is_flushed_at_exit() -> None:
    sink = RecordingSink()
    async with LogStreamer(sink, max_chunk_size=1000, interval=NEVER) as streamer:
        await streamer.write(b"partial ")
        await streamer.write(b"line\r\n")
        await anyio.wait_all_tasks_blocked()
        assert sink.chunks == []  # below max size, before the interval: still buffered
    assert sink.chunks == [Chunk(1, 0, b"partial line\r\n")]


async def test_everything_is_flushed_when_the_body_raises() -> None:
    sink = RecordingSink()
    # The body runs inside the streamer's task group: its error may come out grouped.
    with pytest.RaisesGroup(ZeroDivisionError, allow_unwrapped=True):
        async with LogStreamer(sink, max_chunk_size=1000, interval=NEVER) as streamer:
            await streamer.write(b"before the error")
            _ = 1 / 0
    assert sink.data == b"before the error"


async def test_empty_log_sends_no_chunk() -> None:
    sink = RecordingSink()
    async with LogStreamer(sink, max_chunk_size=1000, interval=0.01) as streamer:
        await streamer.write(b"")
    assert sink.chunks == []
    assert streamer.bytes_written == 0


@pytest.mark.parametrize("size", [0, -1])
async def test_max_chunk_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="max_chunk_size"):
        LogStreamer(RecordingSink(), max_chunk_size=size, interval=1)


# --- failures --------------------------------------------------------------------------------


async def test_refused_chunks_are_counted_and_the_others_still_arrive() -> None:
    sink = FailingSink(fail_sequences=frozenset({2, 5}))
    data = payload(800, seed=4)
    async with LogStreamer(sink, max_chunk_size=100, interval=NEVER) as streamer:
        await streamer.write(data)
    assert streamer.chunks_failed_count == 2
    assert sorted(sink.refused) == [2, 5]
    assert sorted(c.sequence for c in sink.chunks) == [1, 3, 4, 6, 7, 8]
    for chunk in sink.chunks:
        assert chunk.offset == (chunk.sequence - 1) * 100
        assert chunk.data == data[chunk.offset : chunk.offset + 100]


async def test_first_failures_are_counted() -> None:
    sink = FailingSink(fail_first=3)
    async with LogStreamer(sink, max_chunk_size=10, interval=NEVER) as streamer:
        await streamer.write(b"0123456789" * 10)
    assert streamer.chunks_failed_count == 3
    assert len(sink.chunks) == 7


async def test_a_sink_that_always_fails_loses_every_chunk_but_the_exit_completes() -> None:
    sink = FailingSink(always=True)
    with anyio.fail_after(10):
        async with LogStreamer(sink, max_chunk_size=10, interval=0) as streamer:
            for _ in range(20):
                await streamer.write(b"0123456789abc")
    assert sink.chunks == []
    assert streamer.chunks_failed_count == len(sink.refused) >= 26  # 260 bytes, ≤ 10 a chunk
    assert sorted(sink.refused) == list(range(1, len(sink.refused) + 1))


# --- backpressure and bounded memory ---------------------------------------------------------


async def test_uploads_run_in_parallel_up_to_the_number_of_uploaders() -> None:
    sink = GatedSink()
    async with LogStreamer(sink, max_chunk_size=10, interval=NEVER, uploaders=3) as streamer:
        await streamer.write(b"x" * 50)
        with anyio.fail_after(5):
            await sink.changes.wait_until(lambda: sink.in_flight == 3)
        await anyio.wait_all_tasks_blocked()
        assert sink.in_flight == 3
        sink.open()
    assert sink.data == b"x" * 50


async def test_memory_is_bounded_while_the_sink_is_stuck() -> None:
    sink = GatedSink()
    max_size = 100
    data = payload(100 * max_size, seed=5)
    writes_done = 0
    all_written = anyio.Event()

    async with LogStreamer(sink, max_chunk_size=max_size, interval=NEVER) as streamer:

        async def writer() -> None:
            nonlocal writes_done
            for i in range(0, len(data), max_size):
                await streamer.write(data[i : i + max_size])
                writes_done += 1
            all_written.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            with anyio.move_on_after(0.3) as blocked:
                await all_written.wait()
            assert blocked.cancelled_caught, "write did not wait for the stuck sink"
            await anyio.wait_all_tasks_blocked()
            # What is held: one chunk per uploader, the queue, and the chunk being handed over.
            assert sink.in_flight == UPLOADERS
            assert QUEUED_CHUNKS <= writes_done <= UPLOADERS + QUEUED_CHUNKS + 1
            assert sink.chunks == []
            sink.open()
            with anyio.fail_after(10):
                await all_written.wait()
    sink.assert_well_formed(max_chunk_size=max_size)
    assert sink.data == data


# --- the exit flush under cancellation -------------------------------------------------------


async def test_exit_flush_happens_when_the_enclosing_scope_is_cancelled() -> None:
    sink = GatedSink()
    data = payload(5 * 100 + 42, seed=6)  # queued chunks and a buffered partial one

    async def open_when_all_blocked() -> None:
        await anyio.wait_all_tasks_blocked()
        sink.open()

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            async with LogStreamer(sink, max_chunk_size=100, interval=NEVER) as streamer:
                await streamer.write(data)
                await anyio.wait_all_tasks_blocked()
                assert sink.chunks == []
                tg.start_soon(open_when_all_blocked)
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
    assert sink.data == data
    sink.assert_well_formed(max_chunk_size=100)


async def test_cancelling_a_blocked_write_loses_no_byte() -> None:
    sink = GatedSink()
    data = payload(30 * 100, seed=7)  # more than the uploaders and the queue can take

    async def open_when_all_blocked() -> None:
        await anyio.wait_all_tasks_blocked()
        sink.open()

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            async with (
                LogStreamer(sink, max_chunk_size=100, interval=NEVER) as streamer,
                anyio.create_task_group() as writers,
            ):
                writers.start_soon(streamer.write, data)
                await anyio.wait_all_tasks_blocked()  # the write waits for queue space
                tg.start_soon(open_when_all_blocked)
                scope.cancel()
    # Every byte the streamer counted as written reaches the sink.
    assert sink.size == streamer.bytes_written
    assert sink.data == data[: streamer.bytes_written]
    sink.assert_well_formed(max_chunk_size=100)


async def test_exit_while_the_interval_flush_waits_for_queue_space_loses_no_byte() -> None:
    sink = GatedSink()
    full = (UPLOADERS + QUEUED_CHUNKS) * 10  # exactly what the uploaders and queue hold
    data = payload(full + 5, seed=8)

    async def open_when_all_blocked() -> None:
        await anyio.wait_all_tasks_blocked()
        sink.open()

    # interval=0: the ticker cuts the 5-byte remainder as soon as the write is done.
    async with (
        anyio.create_task_group() as tg,
        LogStreamer(sink, max_chunk_size=10, interval=0) as streamer,
    ):
        await streamer.write(data)
        await anyio.wait_all_tasks_blocked()  # the ticker waits for queue space
        assert sink.in_flight == UPLOADERS
        tg.start_soon(open_when_all_blocked)
    assert sink.data == data
    sink.assert_well_formed(max_chunk_size=10)


# --- the flush deadline ----------------------------------------------------------------------


async def test_exit_gives_up_at_the_flush_timeout() -> None:
    sink = GatedSink()  # never opened
    timeout = 0.3
    started = anyio.current_time()
    with anyio.fail_after(10):
        async with LogStreamer(
            sink, max_chunk_size=10, interval=NEVER, flush_timeout=timeout
        ) as streamer:
            await streamer.write(b"x" * 55)
    assert timeout - 0.05 <= anyio.current_time() - started < timeout + 2
    assert sink.chunks == []
    assert sink.in_flight == 0  # the stuck uploads were cancelled, not left behind


async def test_chunks_abandoned_at_the_flush_timeout_are_counted_as_failed() -> None:
    sink = GatedSink()  # never opened
    with anyio.fail_after(10):
        async with LogStreamer(
            sink, max_chunk_size=10, interval=NEVER, flush_timeout=0.3
        ) as streamer:
            await streamer.write(b"x" * 55)  # 6 chunks
    assert sink.chunks == []
    assert streamer.chunks_failed_count == 6
