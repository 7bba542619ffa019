"""Agents: handing one a job is a compare-and-set, and transactions record what they freed."""

from __future__ import annotations

import pytest

from conveyor.storage import Store
from conveyor.storage.queries.base import utcnow
from tests.storage.builders import insert_agent, scheduled_jobs

pytestmark = pytest.mark.anyio


async def test_an_agent_is_claimed_only_while_live_unpaused_and_free(store: Store) -> None:
    first, second = await scheduled_jobs(store, 2)
    async with store.transaction() as tx:
        agent = await insert_agent(tx, "a")
        paused = await insert_agent(tx, "paused")
        await tx.update_agent(paused, paused=1)
        lost = await insert_agent(tx, "lost")
        assert await tx.mark_agent_lost(lost, utcnow())
    async with store.transaction() as tx:
        assert await tx.claim_agent(agent, first)
        # It holds a job now: a second claim does not take it.
        assert not await tx.claim_agent(agent, second)
        assert not await tx.claim_agent(paused, second)
        assert not await tx.claim_agent(lost, second)
        assert (await tx.get_agent(agent)).current_job_id == first
        assert await tx.agents_with_jobs() == {agent}
    async with store.transaction() as tx:
        await tx.set_agent_job(agent, None)
        assert tx.changes.freed_agents == {agent}
        assert await tx.claim_agent(agent, second)
        assert await tx.agents_with_jobs() == {agent}


async def test_transactions_record_what_became_runnable(store: Store) -> None:
    (job_id,) = await scheduled_jobs(store, 1)
    async with store.transaction() as tx:
        agent = await insert_agent(tx, "a")
        assert await tx.transition_job(job_id, ["scheduled"], "assigned", agent_id=agent)
        assert not tx.changes.runnable
    async with store.transaction() as tx:
        # Back to the queue: runnable again.
        assert await tx.transition_job(job_id, ["assigned"], "scheduled", agent_id=None)
        assert tx.changes.runnable
    async with store.transaction() as tx:
        # A compare-and-set that did not match changed nothing.
        assert not await tx.transition_job(job_id, ["assigned"], "scheduled", agent_id=None)
        assert not tx.changes.runnable
    async with store.transaction() as tx:
        # A job that ends may leave room in its concurrency group.
        assert await tx.transition_job(job_id, ["scheduled"], "canceled")
        assert tx.changes.runnable


async def test_a_claim_never_waits_for_a_row_or_group_another_transaction_holds(
    store: Store,
) -> None:
    """Claims for streams run inside transactions that hold locks of their own: on PostgreSQL
    they pass over what is locked instead of waiting (which could close a cycle)."""
    if store.backend != "postgresql":
        pytest.skip("SQLite has one writer: nothing is ever held by another transaction")
    (job_id,) = await scheduled_jobs(store, 1)
    async with store.transaction() as tx:
        agent = await insert_agent(tx, "a")
    async with store.transaction() as holder:
        await holder.get_agent(agent, lock=True)
        assert await holder.lock_group("deploy", wait=False)
        async with store.transaction() as other:
            assert not await other.claim_agent(agent, job_id)
            assert not await other.lock_group("deploy", wait=False)
    async with store.transaction() as tx:
        assert await tx.claim_agent(agent, job_id)
        assert await tx.lock_group("deploy", wait=False)


async def test_a_job_starts_only_held_by_its_agent_from_assigned_or_accepted(store: Store) -> None:
    pushed, pinged = await scheduled_jobs(store, 2)
    async with store.transaction() as tx:
        agent = await insert_agent(tx, "a")
        other = await insert_agent(tx, "other")
        for job_id in (pushed, pinged):
            assert await tx.transition_job(job_id, ["scheduled"], "assigned", agent_id=agent)
        await tx.require_transition(pinged, ["assigned"], "accepted", accepted_at=utcnow())
        accepted_at = (await tx.get_job(pinged)).accepted_at
    started = utcnow()
    async with store.transaction() as tx:
        build_id = (await tx.get_job(pushed)).build_id
        assert await tx.start_job(pushed, other, started) is None  # not the agent holding it
        assert await tx.start_job(pushed, agent, started) == build_id
        assert await tx.start_job(pushed, agent, started) is None  # running already
        assert await tx.start_job(pinged, agent, started) == build_id
        job = await tx.get_job(pushed)
        assert (job.state, job.started_at) == ("running", started)
        assert job.accepted_at is not None  # started straight from `assigned`
        # An accepted job keeps the time it was accepted.
        assert (await tx.get_job(pinged)).accepted_at == accepted_at
