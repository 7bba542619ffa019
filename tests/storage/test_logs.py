"""Log chunks, keyed by (job, offset): the same chunk twice is stored once, another conflicts."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from conveyor.errors import ConflictError, InvalidStateError, NotFoundError
from conveyor.storage import Store
from conveyor.storage import tables as t
from tests.storage.builders import command_step, insert_build

pytestmark = pytest.mark.anyio


async def _two_jobs(store: Store) -> tuple[str, str]:
    async with store.transaction() as tx:
        build_id = await insert_build(tx, "p", [command_step("a"), command_step("b")])
        a, b = (await tx.get_build(build_id)).jobs
    return a.id, b.id


async def test_identical_chunk_is_stored_once(store: Store) -> None:
    job, _ = await _two_jobs(store)
    async with store.transaction() as tx:
        assert await tx.insert_chunk(job, 1, 0, b"hello") is True
    async with store.transaction() as tx:
        # A retried upload: same offset, same bytes (the sequence number does not matter).
        assert await tx.insert_chunk(job, 1, 0, b"hello") is False
        assert await tx.insert_chunk(job, 7, 0, b"hello") is False
        assert await tx.chunk_index(job) == [(0, 5)]
        assert await tx.read_chunks(job, [0]) == [b"hello"]
        # A stored chunk is counted in the job's log_size, a retried one is not.
        assert (await tx.get_job(job)).log_size == 5


async def test_different_chunk_at_a_stored_offset_conflicts(store: Store) -> None:
    job, _ = await _two_jobs(store)
    async with store.transaction() as tx:
        await tx.insert_chunk(job, 1, 0, b"hello")
    for data in [b"HELLO", b"hello, world", b"hell", b""]:
        with pytest.raises(ConflictError, match="at offset 0"):
            async with store.transaction() as tx:
                await tx.insert_chunk(job, 2, 0, data)
    async with store.transaction() as tx:
        assert await tx.read_chunks(job, [0]) == [b"hello"]
        assert await tx.chunk_index(job) == [(0, 5)]


async def test_chunk_index_is_in_offset_order(store: Store) -> None:
    job, other = await _two_jobs(store)
    pieces = {10: b"third", 0: b"first", 5: b"secnd", 15: b"\x00\xff\r\n"}
    async with store.transaction() as tx:
        for sequence, (offset, data) in enumerate(pieces.items(), start=1):
            assert await tx.insert_chunk(job, sequence, offset, data)
        # The same offsets on another job are another log.
        assert await tx.insert_chunk(other, 1, 0, b"other job")
    async with store.transaction() as tx:
        assert await tx.chunk_index(job) == [(0, 5), (5, 5), (10, 5), (15, 4)]
        assert await tx.chunk_index(other) == [(0, 9)]
        assert await tx.read_chunks(job, [0, 5, 10, 15]) == [
            b"first",
            b"secnd",
            b"third",
            b"\x00\xff\r\n",
        ]
        # A subset, asked for in any order, comes back in offset order.
        assert await tx.read_chunks(job, [15, 5]) == [b"secnd", b"\x00\xff\r\n"]
        assert await tx.read_chunks(job, [99]) == []
        assert await tx.chunk_index("no-such-job") == []
        # Big chunks, every byte value, and an empty chunk round-trip exactly.
        big = bytes(range(256)) * 4096  # 1 MiB
        assert await tx.insert_chunk(other, 2, 9, big)
        assert await tx.insert_chunk(other, 3, 9 + len(big), b"")
    async with store.transaction() as tx:
        assert await tx.chunk_index(other) == [(0, 9), (9, len(big)), (9 + len(big), 0)]
        assert await tx.read_chunks(other, [9, 9 + len(big)]) == [big, b""]
        assert await tx.insert_chunk(other, 2, 9, big) is False


async def test_a_chunk_is_stored_only_while_its_job_is_in_a_given_state(store: Store) -> None:
    """What the chunks route asks for: the state check and the insert are one statement."""
    job, other = await _two_jobs(store)
    live = ("accepted", "running", "canceling")

    async def set_state(state: str) -> None:
        async with store.transaction() as tx:
            await tx.conn.execute(update(t.jobs).where(t.jobs.c.id == job).values(state=state))

    await set_state("scheduled")
    with pytest.raises(InvalidStateError, match="job is scheduled: it takes no more log"):
        async with store.transaction() as tx:
            await tx.insert_chunk(job, 1, 0, b"too early", job_states=live)
    await set_state("running")
    async with store.transaction() as tx:
        # The route hands over the body's buffer as it was read: a bytearray.
        assert await tx.insert_chunk(job, 1, 0, bytearray(b"hello"), job_states=live) is True
        assert await tx.insert_chunk(job, 2, 5, b"world", job_states=live) is True
        assert await tx.insert_chunk(job, 1, 0, b"hello", job_states=live) is False
    with pytest.raises(ConflictError, match="at offset 0"):
        async with store.transaction() as tx:
            await tx.insert_chunk(job, 1, 0, b"HELLO", job_states=live)
    await set_state("finished")
    # An ended job's log is closed, to a retried chunk as to a new one.
    for offset, data in [(0, b"hello"), (10, b"late")]:
        with pytest.raises(InvalidStateError, match="job is finished: it takes no more log"):
            async with store.transaction() as tx:
                await tx.insert_chunk(job, 3, offset, data, job_states=live)
    with pytest.raises(NotFoundError, match="no job no-such-job"):
        async with store.transaction() as tx:
            await tx.insert_chunk("no-such-job", 1, 0, b"x", job_states=live)
    async with store.transaction() as tx:
        assert await tx.chunk_index(job) == [(0, 5), (5, 5)]
        assert await tx.read_chunks(job, [0, 5]) == [b"hello", b"world"]
        # Refused, conflicting and retried chunks were not counted.
        assert (await tx.get_job(job)).log_size == 10
        # Without job_states the state does not matter (the other job is pending).
        assert await tx.insert_chunk(other, 1, 0, b"any state") is True
        assert (await tx.get_job(other)).log_size == 9
