"""The baton: one holder at a time, handed to a waiter on release."""

from __future__ import annotations

import anyio
import pytest

from conveyor.agent.baton import Baton

pytestmark = pytest.mark.anyio


async def test_one_holder_at_a_time() -> None:
    baton = Baton()
    assert baton.holder is None
    await baton.acquire("stream")
    assert baton.holder == "stream"
    assert not baton.try_acquire("ping")
    assert baton.holder == "stream"
    baton.release("stream")
    assert baton.holder is None
    assert baton.try_acquire("ping")
    assert baton.holder == "ping"
    assert not baton.try_acquire("stream")
    baton.release("ping")
    assert baton.holder is None


async def test_release_by_the_wrong_holder_raises_and_changes_nothing() -> None:
    baton = Baton()
    await baton.acquire("stream")
    with pytest.raises(RuntimeError, match="ping released the baton held by stream"):
        baton.release("ping")
    assert baton.holder == "stream"
    assert not baton.try_acquire("ping")
    baton.release("stream")


async def test_release_when_nobody_holds_it_raises() -> None:
    baton = Baton()
    with pytest.raises(RuntimeError):
        baton.release("ping")
    assert baton.try_acquire("ping")


async def test_a_waiting_acquirer_gets_it_on_release() -> None:
    baton = Baton()
    await baton.acquire("ping")
    got = anyio.Event()

    async def stream_side() -> None:
        await baton.acquire("stream")
        got.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream_side)
            await anyio.wait_all_tasks_blocked()
            assert not got.is_set()
            assert baton.holder == "ping"
            baton.release("ping")
            # Handed to the waiter: whoever asks right after the release does not get it, so a
            # loop that lets go and grabs again at once cannot starve the waiter.
            assert not baton.try_acquire("ping")
            await got.wait()
    assert baton.holder == "stream"


async def test_waiters_are_served_in_order() -> None:
    baton = Baton()
    await baton.acquire("first")
    order: list[str] = []

    async def take(name: str) -> None:
        await baton.acquire(name)
        order.append(name)
        baton.release(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(take, name)
                await anyio.wait_all_tasks_blocked()
            baton.release("first")
    assert order == ["a", "b", "c"]
    assert baton.holder is None


async def test_a_cancelled_waiter_does_not_keep_the_baton() -> None:
    baton = Baton()
    await baton.acquire("ping")
    async with anyio.create_task_group() as tg:
        tg.start_soon(baton.acquire, "stream")
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert baton.holder == "ping"
    baton.release("ping")
    assert baton.try_acquire("stream")
    baton.release("stream")
