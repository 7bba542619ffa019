"""The dispatcher matches runnable jobs to agents by agent query rules.

A job's query is a mapping of tag → pattern. An agent matches when, for every rule, its tag
value matches the pattern (`*` wildcards; a leading `!` negates). A job without a `queue` rule
goes to the `default` queue, and an agent without a `queue` tag serves the `default` queue.
Jobs are offered by priority, then by how long they have been runnable.
"""

from __future__ import annotations

from datetime import datetime
from fnmatch import fnmatchcase
from typing import Literal

from conveyor.protocol import SignalReason
from conveyor.server import retries, scheduler
from conveyor.storage import Tx
from conveyor.storage.queries.base import utcnow
from conveyor.storage.rows import AgentRow, JobRow

DEFAULT_QUEUE = "default"
# Candidates are read a few at a time; only the one taken is locked.
_BATCH = 5
_MAX_CANDIDATES = 500


def matches(query: dict[str, str], tags: dict[str, str]) -> bool:
    rules = {"queue": DEFAULT_QUEUE, **query}
    have = {"queue": DEFAULT_QUEUE, **tags}
    for key, pattern in rules.items():
        negate = pattern.startswith("!")
        if negate:
            pattern = pattern[1:]
        value = have.get(key)
        hit = value is not None and fnmatchcase(value, pattern)
        if hit == negate:
            return False
    return True


async def claim_job(tx: Tx, agent: AgentRow, *, match_any: bool = False) -> JobRow | None:
    """The job this agent should run next, now assigned to it; None when there is none.

    An agent that already holds an assigned job gets the same job again, so a ping whose
    answer was lost does not strand the job.
    """
    # The agent's row is locked first: two claims for one agent at once take turns, so the
    # second sees the job the first assigned instead of taking another.
    agent = await tx.get_agent(agent.id, lock=True)
    held = await tx.assigned_job(agent.id)
    if held is not None:
        return held
    if agent.paused:
        return None
    seen: list[str] = []
    while len(seen) < _MAX_CANDIDATES:
        batch = await tx.dispatch_candidates(_BATCH, exclude=seen)
        if not batch:
            return None
        for job in batch:
            seen.append(job.id)
            if not match_any and not matches(job.agent_query, agent.tags):
                continue
            if job.concurrency_group and not await _group_has_room(tx, job):
                continue
            if not await tx.lock_if_free(job.id):
                continue
            # Compare-and-set: of two agents racing for one job exactly one update matches.
            if await tx.transition_job(
                job.id, ["scheduled"], "assigned", agent_id=agent.id, assigned_at=utcnow()
            ):
                await tx.set_agent_job(agent.id, job.id)
                return await tx.get_job(job.id)
    return None


async def take_for_stream(
    tx: Tx, job: JobRow, agent_id: str, now: datetime
) -> Literal["assigned", "job-taken", "agent-busy"]:
    """Assign a runnable job to a streaming agent that should hold none.

    Compare-and-sets: the agent from no job to this one (it is live and not paused), then the
    job from `scheduled` to `assigned`. Nothing here waits for a lock another transaction
    holds (this runs inside transactions that hold locks of their own): a busy agent row, a
    concurrency group being settled or a job being claimed elsewhere is passed over, and the
    pass that follows that other transaction's commit looks again. "job-taken": the job is not
    runnable any more, its group is full or busy; "agent-busy": the agent holds a job after
    all, is paused or gone, or its row is busy.
    """
    # Locks in the order pings take them (agent, group, job), so the two never wait in a cycle.
    if not await tx.claim_agent(agent_id, job.id):
        return "agent-busy"
    if (
        (job.concurrency_group and not await _group_has_room(tx, job, wait=False))
        or not await tx.lock_if_free(job.id)
        or not await tx.transition_job(
            job.id, ["scheduled"], "assigned", agent_id=agent_id, assigned_at=now
        )
    ):
        await tx.set_agent_job(agent_id, None)
        return "job-taken"
    return "assigned"


async def _group_has_room(tx: Tx, job: JobRow, *, wait: bool = True) -> bool:
    """A job of a concurrency group runs only while fewer than its limit hold a slot, and
    only when it is the group's longest-waiting job (groups run in order, across builds).
    Without `wait`, a group another transaction is settling right now has no room."""
    assert job.concurrency_group is not None
    # Held until the transaction ends: two claims in one group are settled one at a time.
    if not await tx.lock_group(job.concurrency_group, wait=wait):
        return False
    limit = job.concurrency_limit or 1
    if await tx.running_in_group(job.concurrency_group) >= limit:
        return False
    return await tx.first_waiting_in_group(job.concurrency_group) == job.id


async def release_agent_jobs(tx: Tx, agent_id: str, reason: SignalReason) -> set[str]:
    """An agent is going (disconnect) or gone (lost): settle what it held.

    A job assigned but never accepted goes back to the queue for another agent; a job it had
    accepted or was running is finished with exit status -1 and `reason`. Returns the ids of
    the builds touched (already advanced).
    """
    builds: set[str] = set()
    for job in await tx.jobs_of_agent(agent_id, ["assigned"]):
        if await tx.transition_job(job.id, ["assigned"], "scheduled", agent_id=None):
            await tx.revoke_job_tokens(job.id)  # one pushed with the assignment
        builds.add(job.build_id)
    live = ["accepted", "running", "canceling"]
    for job in await tx.jobs_of_agent(agent_id, live):
        await tx.transition_job(
            job.id,
            [job.state],
            "canceled" if job.state == "canceling" else "finished",
            exit_status=-1,
            signal_reason=reason.value,
            finished_at=utcnow(),
        )
        await tx.revoke_job_tokens(job.id)
        await retries.retry_if_asked(tx, await tx.get_job(job.id))
        builds.add(job.build_id)
    for build_id in builds:
        await scheduler.advance_build(tx, build_id)
    return builds
