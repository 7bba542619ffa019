"""Spool: first in, first out across memory and disk; the file emptied when drained."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from conveyor.runner.spool import Chunk, Spool

pytestmark = pytest.mark.anyio


def chunk(n: int) -> Chunk:
    return Chunk(n, n * 10, b"%010d" % n)


async def test_chunks_come_out_in_order_across_memory_and_disk(tmp_path: Path) -> None:
    spool = Spool(3, tmp_path)
    taken: list[Chunk] = []
    for n in range(1, 11):
        await spool.put(chunk(n))
    assert (spool.in_memory, spool.on_disk) == (3, 7)
    for _ in range(5):
        taken.append(await spool.get() or chunk(0))
    for n in range(11, 16):  # the file still holds chunks: newer ones queue behind them
        await spool.put(chunk(n))
    assert spool.in_memory == 0
    while len(spool):
        taken.append(await spool.get() or chunk(0))
    assert taken == [chunk(n) for n in range(1, 16)]
    assert spool.bytes_on_disk == 0  # drained: the file was emptied
    await spool.put(chunk(16))
    assert (spool.in_memory, spool.on_disk) == (1, 0)  # memory again
    await spool.aclose()


async def test_several_consumers_take_each_chunk_once(tmp_path: Path) -> None:
    spool = Spool(2, tmp_path)
    taken: list[int] = []

    async def consumer() -> None:
        while (got := await spool.get()) is not None:
            taken.append(got.sequence)
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(consumer)
        for n in range(1, 201):
            await spool.put(chunk(n))
            if n % 7 == 0:
                await anyio.sleep(0)
        spool.close()
    assert sorted(taken) == list(range(1, 201))
    assert spool.spilled > 0
    await spool.aclose()


async def test_get_waits_for_a_put_and_returns_none_once_closed_and_drained() -> None:
    spool = Spool(1)
    got: list[Chunk | None] = []

    async def consumer() -> None:
        got.append(await spool.get())
        got.append(await spool.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        await spool.put(chunk(1))
        await anyio.wait_all_tasks_blocked()
        assert got == [chunk(1)]
        spool.close()
    assert got == [chunk(1), None]
    with pytest.raises(RuntimeError, match="closed"):
        await spool.put(chunk(2))


async def test_a_put_waiting_for_memory_room_is_cancelled_without_a_trace(tmp_path: Path) -> None:
    spool = Spool(1, tmp_path / "missing")  # no disk: a full spool makes put wait
    await spool.put(chunk(1))
    with anyio.move_on_after(0.1) as waited:
        await spool.put(chunk(2))
    assert waited.cancelled_caught
    assert len(spool) == 1
    assert await spool.get() == chunk(1)
    await spool.put(chunk(3))  # room again: memory takes it
    assert await spool.get() == chunk(3)


def test_memory_chunks_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory_chunks"):
        Spool(0)
