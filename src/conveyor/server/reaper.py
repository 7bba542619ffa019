"""The reaper: agents that stopped sending heartbeats are lost, and so are their jobs.

An agent whose last sign of life (register, connect, heartbeat, ping) is older than the lost
timeout is marked `lost`, its tokens are revoked (so a return finds its calls refused), a job it
held but never accepted goes back to the queue, and a job it was running is finished with exit
status -1 and signal reason `agent_lost`.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import anyio

from conveyor.protocol import SignalReason
from conveyor.server.context import ServerContext
from conveyor.server.dispatcher import release_agent_jobs
from conveyor.storage.queries.base import utcnow

log = logging.getLogger("conveyor.server")


# An agent that was handed a job and did not accept it within this long lost the job.
ASSIGNMENT_TIMEOUT_S = 30.0


async def expire_assignments(ctx: ServerContext, older_than: float = ASSIGNMENT_TIMEOUT_S) -> int:
    """Jobs assigned but never accepted (or started, when pushed with their spec) go back to
    the queue, for another agent to take."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    async with ctx.store.transaction() as tx:
        expired = await tx.stale_assignments(cutoff)
        for job in expired:
            if await tx.transition_job(job.id, ["assigned"], "scheduled", agent_id=None):
                # A token pushed with the assignment must not start the job any more.
                await tx.revoke_job_tokens(job.id)
                if job.agent_id is not None:
                    await tx.set_agent_job(job.agent_id, None)
                log.warning("job %s was not accepted in %ss: offered again", job.id, older_than)
    if expired:
        ctx.streams.kick()
    return len(expired)


async def expire_timeouts(ctx: ServerContext) -> int:
    """Jobs running past their step's `timeout_in_minutes` are canceled: their agents stop
    them, and they are marked timed out."""
    async with ctx.store.transaction() as tx:
        overdue = await tx.overdue_jobs(utcnow())
        for job in overdue:
            if await tx.transition_job(job.id, [job.state], "canceling", timed_out=1):
                log.warning(
                    "job %s ran past its %s minute timeout: canceling it", job.id,
                    job.timeout_minutes,
                )  # fmt: skip
    for job in overdue:
        ctx.notifier.notify(f"build:{job.build_id}")
    return len(overdue)


async def reap_once(ctx: ServerContext, lost_after: float) -> list[str]:
    """Mark lost agents and settle their jobs; returns the ids of the agents marked lost."""
    cutoff = utcnow() - timedelta(seconds=lost_after)
    lost: list[str] = []
    async with ctx.store.transaction() as tx:
        silent = await tx.silent_agents(cutoff)
    for agent in silent:
        async with ctx.store.transaction() as tx:
            if not await tx.mark_agent_lost(agent.id, cutoff):
                continue  # it spoke up in the meantime
            await tx.revoke_agent_tokens(agent.id)
            builds = await release_agent_jobs(tx, agent.id, SignalReason.AGENT_LOST)
        log.warning("agent %s (%s) is lost: no heartbeat for %ss", agent.name, agent.id, lost_after)
        lost.append(agent.id)
        for build_id in builds:
            ctx.notifier.notify(f"build:{build_id}")
    if lost:
        ctx.streams.kick()
    return lost


async def reaper_loop(ctx: ServerContext, lost_after: float) -> None:
    # Checking four times per timeout bounds how late a loss is noticed to a quarter of it.
    interval = max(0.5, min(lost_after / 4, ASSIGNMENT_TIMEOUT_S / 3))
    while True:
        await anyio.sleep(interval)
        try:
            await reap_once(ctx, lost_after)
            await expire_assignments(ctx)
            await expire_timeouts(ctx)
        except Exception:
            # A failed round (a database hiccup; on PostgreSQL, a transaction chosen to break
            # a deadlock) must not stop the server: the next round does the same work.
            log.exception("reaper round failed")
        # A safety net under the assignments made as transactions commit: one full pass of
        # the pusher every round, whatever it was told.
        ctx.streams.sweep()
