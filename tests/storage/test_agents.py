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
