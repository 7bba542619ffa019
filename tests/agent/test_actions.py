"""The action loop with a real debouncer, stream health and baton; jobs are a fake callback that
runs until the test lets it finish. The "ping side" is played by the test, holding the baton the
way the ping loop does: for one action at a time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from conveyor.agent.actions import ActionLoop
from conveyor.agent.baton import Baton
from conveyor.agent.debouncer import Debouncer
from conveyor.agent.stream import StreamHealth

pytestmark = pytest.mark.anyio

PING = "ping"
STREAM = "stream"


class Jobs:
    """A fake `on_job`: each job runs until the test finishes it."""

    def __init__(self) -> None:
        self.started: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
        self.finish: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
        self.ran: list[str] = []
        self.done: list[str] = []
        self.interrupted: list[str] = []

    async def __call__(self, job_id: str) -> None:
        self.ran.append(job_id)
        self.started[job_id].set()
        try:
            await self.finish[job_id].wait()
        except anyio.get_cancelled_exc_class():
            self.interrupted.append(job_id)
            raise
        self.done.append(job_id)


class Rig:
    def __init__(self) -> None:
        self.debouncer = Debouncer()
        self.health = StreamHealth()
        self.baton = Baton()
        self.jobs = Jobs()
        self.loop = ActionLoop(self.debouncer, self.health, self.baton, self.jobs, name="w1")
        self.result: list[bool] = []
        self.ended = anyio.Event()

    async def run(self) -> None:
        self.result.append(await self.loop.run())
        self.ended.set()


@asynccontextmanager
async def running(rig: Rig) -> AsyncIterator[Rig]:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.run)
            yield rig
            await rig.ended.wait()


async def settle() -> None:
    """Let every task run until it waits for something."""
    await anyio.wait_all_tasks_blocked()


async def test_holds_the_baton_while_healthy_and_runs_jobs() -> None:
    rig = Rig()
    async with running(rig):
        await settle()
        assert rig.baton.holder is None  # not healthy yet: the ping side may act
        rig.health.set(True)
        await settle()
        assert rig.baton.holder == STREAM
        assert not rig.baton.try_acquire(PING)
        rig.debouncer.job("j1")
        rig.debouncer.job("j2")
        await rig.jobs.started["j1"].wait()
        assert rig.baton.holder == STREAM
        rig.jobs.finish["j1"].set()
        await rig.jobs.started["j2"].wait()
        rig.jobs.finish["j2"].set()
        await settle()
        assert rig.jobs.done == ["j1", "j2"]
        assert rig.baton.holder == STREAM  # idle, still healthy: it keeps the baton
        rig.loop.stop()
    assert rig.result == [False]
    assert rig.baton.holder is None


async def test_unhealthy_while_idle_hands_the_baton_to_the_ping_side_at_once() -> None:
    rig = Rig()
    async with running(rig):
        rig.health.set(True)
        await settle()
        assert rig.baton.holder == STREAM
        rig.health.set(False)
        with anyio.fail_after(5):
            await rig.baton.acquire(PING)
        assert rig.baton.holder == PING
        rig.baton.release(PING)
        rig.loop.stop()
    assert rig.result == [False]


async def test_unhealthy_mid_job_releases_the_baton_only_after_the_job() -> None:
    rig = Rig()
    ping_has_it = anyio.Event()

    async def ping_side() -> None:
        await rig.baton.acquire(PING)
        ping_has_it.set()

    async with running(rig), anyio.create_task_group() as tg:
        rig.health.set(True)
        rig.debouncer.job("j1")
        await rig.jobs.started["j1"].wait()
        tg.start_soon(ping_side)
        rig.health.set(False)  # the stream dies mid-job
        rig.debouncer.job("j2")  # what the stream said before it died
        await settle()
        # The job goes on, and the stream side keeps the baton until it is done.
        assert rig.jobs.interrupted == []
        assert not ping_has_it.is_set()
        assert rig.baton.holder == STREAM
        rig.jobs.finish["j1"].set()
        await ping_has_it.wait()
        assert rig.baton.holder == PING
        await settle()
        # Unhealthy: the stream side takes no further action (j2 waits).
        assert rig.jobs.ran == ["j1"]
        assert rig.jobs.done == ["j1"]
        rig.baton.release(PING)
        rig.loop.stop()
    assert rig.result == [False]
    assert rig.jobs.ran == ["j1"]


async def test_recovery_takes_the_baton_back_only_between_ping_actions() -> None:
    rig = Rig()
    async with running(rig):
        # The stream is down: the ping side acts, e.g. runs a job it got by ping.
        await rig.baton.acquire(PING)
        rig.debouncer.job("j1")
        rig.health.set(True)  # the stream is back, mid-action of the ping side
        await settle()
        assert rig.baton.holder == PING
        assert rig.jobs.ran == []  # nothing from the stream runs while the ping side acts
        # The ping side is between actions: it lets go, and asks again at once (as the ping
        # loop does after a job). The stream side was waiting and gets it first.
        rig.baton.release(PING)
        assert not rig.baton.try_acquire(PING)
        await rig.jobs.started["j1"].wait()
        assert rig.baton.holder == STREAM
        rig.jobs.finish["j1"].set()
        await settle()
        assert rig.jobs.done == ["j1"]
        assert rig.baton.holder == STREAM
        rig.loop.stop()
    assert rig.result == [False]
    assert rig.baton.holder is None


async def test_flapping_health_never_runs_two_things_at_once() -> None:
    """Down and up again while a job runs: the job finishes, then the stream side carries on
    with the next action; nothing ran twice and the ping side never got in between."""
    rig = Rig()
    async with running(rig):
        rig.health.set(True)
        rig.debouncer.job("j1")
        await rig.jobs.started["j1"].wait()
        rig.health.set(False)
        rig.health.set(True)
        rig.debouncer.job("j2")
        rig.jobs.finish["j1"].set()
        await rig.jobs.started["j2"].wait()
        assert rig.baton.holder == STREAM
        rig.jobs.finish["j2"].set()
        await settle()
        rig.loop.stop()
    assert rig.jobs.ran == rig.jobs.done == ["j1", "j2"]


async def test_disconnect_ends_run_with_true() -> None:
    rig = Rig()
    async with running(rig):
        rig.health.set(True)
        rig.debouncer.job("j1")
        await rig.jobs.started["j1"].wait()
        rig.debouncer.disconnect()  # while a job runs: it is the next action, not an interrupt
        rig.debouncer.job("j2")
        await settle()
        assert rig.jobs.interrupted == []
        rig.jobs.finish["j1"].set()
    assert rig.result == [True]
    assert rig.jobs.ran == ["j1"]
    assert rig.baton.holder is None


async def test_disconnect_wins_over_queued_jobs() -> None:
    rig = Rig()
    rig.debouncer.job("j1")
    rig.debouncer.disconnect()
    rig.health.set(True)
    async with running(rig):
        pass
    assert rig.result == [True]
    assert rig.jobs.ran == []


async def test_pause_holds_jobs_until_resume() -> None:
    rig = Rig()
    async with running(rig):
        rig.health.set(True)
        rig.debouncer.pause()
        rig.debouncer.job("j1")
        await settle()
        assert rig.jobs.ran == []
        assert rig.debouncer.paused
        rig.debouncer.resume()
        await rig.jobs.started["j1"].wait()
        rig.jobs.finish["j1"].set()
        await settle()
        rig.loop.stop()
    assert rig.jobs.done == ["j1"]


async def test_stop_does_not_interrupt_the_running_job() -> None:
    rig = Rig()
    async with running(rig):
        rig.health.set(True)
        rig.debouncer.job("j1")
        rig.debouncer.job("j2")
        await rig.jobs.started["j1"].wait()
        rig.loop.stop()
        await settle()
        assert rig.jobs.interrupted == []
        assert not rig.ended.is_set()
        assert rig.baton.holder == STREAM
        rig.jobs.finish["j1"].set()
    assert rig.result == [False]
    assert rig.jobs.ran == rig.jobs.done == ["j1"]  # no further job after stop
    assert rig.baton.holder is None


async def test_stop_while_waiting_for_health() -> None:
    rig = Rig()
    async with running(rig):
        await settle()
        rig.loop.stop()
    assert rig.result == [False]
    assert rig.baton.holder is None


async def test_stop_while_waiting_for_the_baton_leaves_it_to_its_holder() -> None:
    rig = Rig()
    await rig.baton.acquire(PING)
    async with running(rig):
        rig.health.set(True)
        await settle()
        rig.loop.stop()
    assert rig.result == [False]
    assert rig.baton.holder == PING
    rig.baton.release(PING)
    assert rig.baton.try_acquire(PING)


async def test_stop_before_run() -> None:
    rig = Rig()
    rig.loop.stop()
    rig.health.set(True)
    rig.debouncer.job("j1")
    async with running(rig):
        pass
    assert rig.result == [False]
    assert rig.jobs.ran == []
    assert rig.baton.holder is None
