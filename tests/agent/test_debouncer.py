"""The debouncer: stream messages in, at most one next action out."""

from __future__ import annotations

import anyio
import pytest

from conveyor.agent.debouncer import Action, Debouncer

pytestmark = pytest.mark.anyio


def drain(debouncer: Debouncer) -> list[Action]:
    """Every action the debouncer would hand out right now, in order."""
    actions: list[Action] = []
    while (action := debouncer.next_nowait()) is not None:
        actions.append(action)
        if action.kind == "disconnect":
            break  # sticky: it would be handed out for ever
    return actions


def test_nothing_happened_means_no_action() -> None:
    debouncer = Debouncer()
    assert debouncer.next_nowait() is None
    assert not debouncer.paused


def test_pause_then_resume_before_acting_is_no_action() -> None:
    debouncer = Debouncer()
    debouncer.pause()
    debouncer.resume()
    assert drain(debouncer) == []
    assert not debouncer.paused


def test_pause_resume_pause_is_one_pause() -> None:
    debouncer = Debouncer()
    debouncer.pause()
    debouncer.resume()
    debouncer.pause()
    assert drain(debouncer) == [Action("pause")]
    assert debouncer.paused


def test_a_burst_of_pauses_is_one_pause_and_a_burst_of_resumes_one_resume() -> None:
    debouncer = Debouncer()
    for _ in range(5):
        debouncer.pause()
    assert drain(debouncer) == [Action("pause")]
    for _ in range(5):
        debouncer.resume()
    assert drain(debouncer) == [Action("resume")]
    # Resume while not paused (the stream opens with `resume`) is nothing to act on.
    debouncer.resume()
    assert drain(debouncer) == []


def test_resume_then_pause_while_paused_is_nothing_new() -> None:
    debouncer = Debouncer()
    debouncer.pause()
    assert drain(debouncer) == [Action("pause")]
    debouncer.resume()
    debouncer.pause()
    assert drain(debouncer) == []
    assert debouncer.paused


def test_disconnect_is_sticky_and_wins_over_everything() -> None:
    debouncer = Debouncer()
    debouncer.job("j1")
    debouncer.pause()
    debouncer.disconnect()
    debouncer.resume()
    debouncer.job("j2")
    for _ in range(3):
        assert debouncer.next_nowait() == Action("disconnect")


async def test_disconnect_is_what_next_returns_and_keeps_returning() -> None:
    debouncer = Debouncer()
    debouncer.disconnect()
    debouncer.job("j1")
    with anyio.fail_after(5):
        assert await debouncer.next() == Action("disconnect")
        assert await debouncer.next() == Action("disconnect")


def test_jobs_are_handed_out_in_order() -> None:
    debouncer = Debouncer()
    for job_id in ("a", "b", "c"):
        debouncer.job(job_id)
    assert drain(debouncer) == [Action("job", "a"), Action("job", "b"), Action("job", "c")]


def test_a_job_already_queued_is_not_queued_twice() -> None:
    debouncer = Debouncer()
    debouncer.job("a")
    debouncer.job("b")
    debouncer.job("a")
    assert drain(debouncer) == [Action("job", "a"), Action("job", "b")]


def test_jobs_are_held_while_paused_and_released_after_resume() -> None:
    debouncer = Debouncer()
    debouncer.job("a")
    debouncer.pause()
    debouncer.job("b")
    # The pause comes first, although a job was queued before it: nothing runs while paused.
    assert drain(debouncer) == [Action("pause")]
    debouncer.job("c")
    assert drain(debouncer) == []
    debouncer.resume()
    assert drain(debouncer) == [
        Action("resume"),
        Action("job", "a"),
        Action("job", "b"),
        Action("job", "c"),
    ]


def test_disconnect_while_paused_with_jobs_queued() -> None:
    debouncer = Debouncer()
    debouncer.pause()
    debouncer.job("a")
    assert drain(debouncer) == [Action("pause")]
    debouncer.disconnect()
    assert drain(debouncer) == [Action("disconnect")]


async def test_next_waits_until_something_arrives() -> None:
    debouncer = Debouncer()
    got: list[Action] = []

    async def consume() -> None:
        got.append(await debouncer.next())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            # A pause and resume before the consumer ran: nothing to do, it keeps waiting.
            debouncer.pause()
            debouncer.resume()
            await anyio.wait_all_tasks_blocked()
            assert got == []
            debouncer.job("j1")
    assert got == [Action("job", "j1")]


async def test_next_wakes_for_a_pause_and_then_for_a_resume() -> None:
    debouncer = Debouncer()
    got: list[Action] = []

    async def consume(n: int) -> None:
        for _ in range(n):
            got.append(await debouncer.next())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, 3)
            debouncer.pause()
            await anyio.wait_all_tasks_blocked()
            assert got == [Action("pause")]
            debouncer.job("j1")  # held: still paused
            await anyio.wait_all_tasks_blocked()
            assert got == [Action("pause")]
            debouncer.resume()
    assert got == [Action("pause"), Action("resume"), Action("job", "j1")]
