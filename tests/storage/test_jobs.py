"""Jobs: compare-and-set transitions, and exactly-once claims under contention."""

from __future__ import annotations

import random
from collections import Counter

import anyio
import pytest
from sqlalchemy import update

from conveyor.errors import InvalidStateError, NotFoundError
from conveyor.server.dispatcher import claim_job
from conveyor.storage import Store
from conveyor.storage import tables as t
from conveyor.storage.queries.base import utcnow
from tests.storage.builders import command_step, insert_agent, insert_build, scheduled_jobs

pytestmark = pytest.mark.anyio


async def test_transition_is_compare_and_set(store: Store) -> None:
    async with store.transaction() as tx:
        build_id = await insert_build(tx, "p", [command_step("one")])
        job_id = (await tx.get_build(build_id)).jobs[0].id
        agent_id = await insert_agent(tx, "a1")

    async with store.transaction() as tx:
        # pending → assigned is not offered: nothing changes, not even the other values.
        assert not await tx.transition_job(job_id, ["scheduled"], "assigned", agent_id=agent_id)
        job = await tx.get_job(job_id)
        assert (job.state, job.agent_id, job.assigned_at) == ("pending", None, None)

        assert await tx.transition_job(job_id, ["pending"], "scheduled", runnable_at=utcnow())
        assert await tx.transition_job(
            job_id, ["scheduled"], "assigned", agent_id=agent_id, assigned_at=utcnow()
        )
        # The second of two writers racing from the same state loses.
        assert not await tx.transition_job(
            job_id, ["scheduled"], "assigned", agent_id="someone-else"
        )
        job = await tx.get_job(job_id)
        assert (job.state, job.agent_id) == ("assigned", agent_id)
        assert job.assigned_at is not None

        with pytest.raises(InvalidStateError, match=r"is assigned, not running or canceling"):
            await tx.require_transition(job_id, ["running", "canceling"], "finished")
        await tx.require_transition(job_id, ["assigned"], "accepted")
        assert (await tx.get_job(job_id)).state == "accepted"

        assert not await tx.transition_job("no-such-job", ["pending"], "scheduled")
        with pytest.raises(NotFoundError):
            await tx.require_transition("no-such-job", ["pending"], "scheduled")


async def test_schedule_and_skip_touch_only_their_states(store: Store) -> None:
    async with store.transaction() as tx:
        build_id = await insert_build(tx, "p", [command_step("a", jobs=3)])
        build = await tx.get_build(build_id)
        step_id = build.steps[0].id
        first, second, _ = [j.id for j in build.jobs]
        await tx.transition_job(first, ["pending"], "canceled")
        await tx.schedule_step_jobs(step_id)
        assert [(await tx.get_job(j.id)).state for j in build.jobs] == [
            "canceled",
            "scheduled",
            "scheduled",
        ]
        assert (await tx.get_job(second)).runnable_at is not None
        await tx.transition_job(second, ["scheduled"], "assigned")
        await tx.skip_step_jobs(step_id)
        states = [(await tx.get_job(j.id)).state for j in build.jobs]
    assert states == ["canceled", "assigned", "skipped"]


async def test_dispatch_candidates_by_priority_then_age(store: Store) -> None:
    async with store.transaction() as tx:
        build_id = await insert_build(tx, "p", [command_step(f"s{i}") for i in range(3)])
        build = await tx.get_build(build_id)
    for step in build.steps:  # one transaction each: distinct runnable_at, oldest first
        async with store.transaction() as tx:
            await tx.schedule_step_jobs(step.id)
    old, middle, new = [j.id for j in build.jobs]
    async with store.transaction() as tx:
        assert [j.id for j in await tx.dispatch_candidates(10)] == [old, middle, new]
    # Priority outranks age.
    async with store.transaction() as tx:
        await tx.conn.execute(update(t.jobs).where(t.jobs.c.id == new).values(priority=5))
    async with store.transaction() as tx:
        assert [j.id for j in await tx.dispatch_candidates(2)] == [new, old]


async def test_claim_respects_agent_query_and_keeps_the_held_job(store: Store) -> None:
    async with store.transaction() as tx:
        build_id = await insert_build(
            tx,
            "p",
            [
                command_step("linux", agent_query={"queue": "linux"}),
                command_step("any"),
            ],
        )
        build = await tx.get_build(build_id)
        for step in build.steps:
            await tx.schedule_step_jobs(step.id)
        linux_job, any_job = [j.id for j in build.jobs]
        mac = await tx.get_agent(await insert_agent(tx, "mac", {"queue": "mac"}))
        linux = await tx.get_agent(await insert_agent(tx, "linux", {"queue": "linux"}))
        default = await tx.get_agent(await insert_agent(tx, "default"))

    async with store.transaction() as tx:
        assert await claim_job(tx, mac) is None
    async with store.transaction() as tx:
        claimed = await claim_job(tx, linux)
        assert claimed is not None
        assert (claimed.id, claimed.state, claimed.agent_id) == (linux_job, "assigned", linux.id)
        assert (await tx.get_agent(linux.id)).current_job_id == linux_job
    async with store.transaction() as tx:
        # Asking again while the job is unaccepted gives the same job, not a second one.
        again = await claim_job(tx, linux)
        assert again is not None and again.id == linux_job
    async with store.transaction() as tx:
        claimed = await claim_job(tx, default)
        assert claimed is not None and claimed.id == any_job
    async with store.transaction() as tx:
        assert await claim_job(tx, mac) is None


async def _claim_until_drained(
    store: Store, agent_ids: list[str], tasks_per_agent: int
) -> list[tuple[str, str]]:
    """Claim concurrently until no job is scheduled; each claim is accepted in its transaction."""
    claims: list[tuple[str, str]] = []

    async def worker(agent_id: str) -> None:
        idle_rounds = 0
        while True:
            await anyio.sleep(random.uniform(0, 0.002))
            claimed: str | None = None
            async with store.transaction() as tx:
                agent = await tx.get_agent(agent_id)
                job = await claim_job(tx, agent)
                if job is not None:
                    assert job.state == "assigned" and job.agent_id == agent_id
                    # Accept at once so this agent may claim another.
                    await tx.require_transition(job.id, ["assigned"], "accepted")
                    await tx.set_agent_job(agent_id, None)
                    claimed = job.id
                    left = 1
                else:
                    left = len(await tx.dispatch_candidates(1))
            if claimed is not None:
                claims.append((agent_id, claimed))
                idle_rounds = 0
            elif left == 0:
                idle_rounds += 1
                if idle_rounds >= 3:
                    return

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for agent_id in agent_ids:
                for _ in range(tasks_per_agent):
                    tg.start_soon(worker, agent_id)
    return claims


async def test_each_job_is_claimed_exactly_once_under_contention(store: Store) -> None:
    job_ids = await scheduled_jobs(store, 30)
    async with store.transaction() as tx:
        agent_ids = [await insert_agent(tx, f"agent-{i}") for i in range(10)]

    claims = await _claim_until_drained(store, agent_ids, tasks_per_agent=3)

    per_job = Counter(job for _, job in claims)
    assert sorted(per_job) == sorted(job_ids)
    assert set(per_job.values()) == {1}, "a job was handed out twice"
    async with store.transaction() as tx:
        jobs = [await tx.get_job(j) for j in job_ids]
    assert {j.state for j in jobs} == {"accepted"}
    assert {j.id: j.agent_id for j in jobs} == {job: agent for agent, job in claims}


async def test_an_agent_claiming_concurrently_holds_at_most_one_job(store: Store) -> None:
    """Two claims for one agent at once: the second sees the job the first assigned.

    More jobs wait than the dispatcher locks in one batch, so a second claim that did not wait
    for the first would find a job of its own.
    """
    await scheduled_jobs(store, 20)
    async with store.transaction() as tx:
        agent = await tx.get_agent(await insert_agent(tx, "eager"))
    first_claimed = anyio.Event()
    got: list[str] = []

    async def first() -> None:
        async with store.transaction() as tx:
            job = await claim_job(tx, agent)
            assert job is not None
            got.append(job.id)
            first_claimed.set()
            await anyio.sleep(0.3)  # the second claim is under way meanwhile

    async def second() -> None:
        await first_claimed.wait()
        async with store.transaction() as tx:
            job = await claim_job(tx, agent)
            assert job is not None
            got.append(job.id)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
    async with store.transaction() as tx:
        held = await tx.jobs_of_agent(agent.id, ["assigned"])
    assert [j.id for j in held] == got[:1]
    assert got[0] == got[1]


async def test_an_open_claim_does_not_starve_other_agents(
    store: Store, request: pytest.FixtureRequest
) -> None:
    """While one agent's claim transaction is open, another agent still gets a job (PostgreSQL).

    SQLite has one writer: the second transaction would wait for the first, by design.
    """
    if store.backend != "postgresql":
        pytest.skip("SQLite serialises writers; concurrent claim transactions are PostgreSQL's")
    await scheduled_jobs(store, 2)
    async with store.transaction() as tx:
        first_agent = await tx.get_agent(await insert_agent(tx, "first"))
        second_agent = await tx.get_agent(await insert_agent(tx, "second"))
    async with store.transaction() as tx1:
        first = await claim_job(tx1, first_agent)
        assert first is not None
        with anyio.fail_after(10):
            async with store.transaction() as tx2:
                second = await claim_job(tx2, second_agent)
    assert second is not None
    assert second.id != first.id
