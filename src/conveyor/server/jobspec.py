"""The JobSpec an agent runs a job from: given by `accept`, or pushed with the assignment on the
agent's stream (so a streaming agent starts without an accept round trip)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor import protocol as p
from conveyor.server import jobenv
from conveyor.storage import Tx
from conveyor.storage.queries.base import utcnow
from conveyor.storage.rows import AgentRow, JobRow

if TYPE_CHECKING:
    from conveyor.server.context import ServerContext


async def job_spec(
    ctx: ServerContext, tx: Tx, job: JobRow, agent: AgentRow, *, revoke: bool = True
) -> p.JobSpec:
    """The job as `agent` runs it, with a new job token. The caller has just assigned or
    accepted the job in `tx`. With `revoke`, the job's earlier tokens are revoked, so only the
    newest works; a fresh assignment has none (taking an assignment back revokes its token).
    Every statement here is on the dispatch path: each one costs about a millisecond."""
    job_id = job.id
    # Not the whole build (a build may have hundreds of jobs): its own row and the job's step,
    # in one query.
    build, step = await tx.get_build_and_step(job.build_id, job.step_id)
    if revoke:
        await tx.revoke_job_tokens(job_id)
    # Bound to the agent too: only the agent the job is assigned to can start it with it.
    token = await tx.create_token("job", job_id=job_id, agent_id=agent.id)
    return p.JobSpec(
        id=job.id,
        build_id=build.id,
        build_number=build.number,
        pipeline=build.pipeline_slug,
        step_key=step.key,
        label=job.label,
        command=job.command,
        env=jobenv.job_env(build, step, job, agent, endpoint=ctx.external_url),
        token=token,
        chunks_max_size_bytes=ctx.chunk_max_size,
        chunks_interval_seconds=ctx.chunk_interval,
        log_max_size_bytes=ctx.log_max_size,
        artifact_paths=[str(glob) for glob in step.config.get("artifact_paths") or []],
        assigned_at=job.assigned_at or utcnow(),
    )
