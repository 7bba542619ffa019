"""REST API v1 for operators, the CLI and the web UI, authenticated by API tokens."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from conveyor import protocol as p
from conveyor.errors import NotFoundError, PipelineError
from conveyor.pipeline import parse_pipeline
from conveyor.server import scheduler
from conveyor.server.auth import api_token, context
from conveyor.server.context import ServerContext
from conveyor.server.dispatcher import DEFAULT_QUEUE, matches
from conveyor.storage.rows import AgentRow, BuildRow

router = APIRouter(prefix=p.REST_PREFIX, tags=["rest"], dependencies=[Depends(api_token)])

# Chunks read per query while streaming a log: bounded memory for logs of any size.
_LOG_READ_BATCH = 8
_MAX_WAIT_S = 60.0
# How often a waiting request re-reads the build even without a local change, so changes made
# by another replica are seen.
_WAIT_SLICE_S = 1.0


def waiting_for(query: dict[str, str], agents: list[AgentRow] | None) -> str | None:
    """Why a runnable job waits, when no connected agent could take it; None otherwise."""
    if agents is None or any(matches(query, a.tags) for a in agents):
        return None
    rules = {"queue": DEFAULT_QUEUE, **query}
    return "waiting for an agent with " + ", ".join(f"{k}={v}" for k, v in sorted(rules.items()))


def build_out(
    build: BuildRow, warnings: list[str] | None = None, *, agents: list[AgentRow] | None = None
) -> p.BuildOut:
    """`agents`: the connected agents, to say which runnable jobs none of them can take."""
    step_keys = {s.id: s.key for s in build.steps}
    jobs = [
        p.JobOut(
            id=j.id,
            step_key=step_keys.get(j.step_id),
            label=j.label,
            command=j.command,
            state=p.JobState(j.state),
            attempt=j.attempt,
            agent_id=j.agent_id,
            exit_status=j.exit_status,
            signal=j.signal,
            signal_reason=j.signal_reason,
            passed=j.passed,
            waiting_for=waiting_for(j.agent_query, agents) if j.state == "scheduled" else None,
            log_size=j.log_size,
            chunks_failed_count=j.chunks_failed_count,
            created_at=j.created_at,
            runnable_at=j.runnable_at,
            started_at=j.started_at,
            finished_at=j.finished_at,
        )
        for j in build.jobs
    ]
    fingerprint = "|".join(
        [build.state, *(f"{j.id}:{j.state}:{j.exit_status}:{j.log_size}" for j in build.jobs)]
    )
    return p.BuildOut(
        id=build.id,
        pipeline=build.pipeline_slug,
        number=build.number,
        state=p.BuildState(build.state),
        branch=build.branch,
        commit=build.commit,
        message=build.message,
        created_at=build.created_at,
        started_at=build.started_at,
        finished_at=build.finished_at,
        jobs=jobs,
        warnings=warnings or [],
        # A build listed without its jobs has no version to wait on.
        version=hashlib.sha256(fingerprint.encode()).hexdigest()[:16] if build.steps else "",
    )


async def create_build(
    ctx: ServerContext, slug: str, body: p.CreateBuildRequest, *, source: str = "api"
) -> tuple[BuildRow, list[str]]:
    """Validate the whole pipeline first, then store the build in one transaction."""
    # Parsing is CPU work proportional to the document: keep it off the event loop.
    pipeline = await anyio.to_thread.run_sync(
        functools.partial(parse_pipeline, body.pipeline, filename=body.filename)
    )
    planned = scheduler.plan_steps(pipeline, filename=body.filename)
    async with ctx.store.transaction() as tx:
        build_id = await tx.insert_build(
            pipeline_slug=slug,
            pipeline_text=body.pipeline,
            steps=planned,
            branch=body.branch,
            commit=body.commit,
            message=body.message,
            env=body.env,
            source=source,
        )
        build = await scheduler.advance_build(tx, build_id)
    ctx.notifier.notify(f"build:{build.id}")
    ctx.streams.kick()
    return build, list(pipeline.warnings)


@router.post("/pipelines/{slug}/builds", response_model=p.BuildOut, status_code=201)
async def post_build(slug: str, body: p.CreateBuildRequest, request: Request) -> p.BuildOut:
    if len(slug) > 100 or not slug.replace("-", "").replace("_", "").isalnum():
        raise HTTPException(
            422, "pipeline slug may hold only letters, digits, '-' and '_' (at most 100)"
        )
    try:
        build, warnings = await create_build(context(request), slug, body)
    except PipelineError as exc:
        raise HTTPException(422, str(exc)) from None
    return build_out(build, warnings)


@router.get("/builds", response_model=list[p.BuildOut])
async def list_builds(
    request: Request,
    pipeline: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[p.BuildOut]:
    async with context(request).store.transaction() as tx:
        builds = await tx.list_builds(pipeline_slug=pipeline, limit=limit)
    return [build_out(b) for b in builds]


@router.get("/pipelines/{slug}/builds/{number}", response_model=p.BuildOut)
async def get_build(
    slug: str,
    number: int,
    request: Request,
    wait: Annotated[float, Query(ge=0, le=_MAX_WAIT_S)] = 0,
    after: str | None = None,
) -> p.BuildOut:
    """With `wait` and `after`, answer as soon as the build's version differs from `after`."""
    ctx = context(request)
    agents = None if ctx.match_any_agent else await _connected_agents(ctx)
    async with ctx.store.transaction() as tx:
        try:
            build = await tx.get_build_by_number(slug, number)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
    out = build_out(build, agents=agents)
    if not wait or after is None or out.version != after:
        return out
    # Only the waiting is under the deadline: a query cut short by a cancel would cost the
    # pool its connection.
    deadline = anyio.current_time() + wait
    while anyio.current_time() < deadline and not ctx.stopping.is_set():
        changed = ctx.notifier.subscribe(f"build:{build.id}")
        # Read again once subscribed: a change in between is not lost.
        async with ctx.store.transaction() as tx:
            out = build_out(await tx.get_build(build.id), agents=agents)
        if out.version != after:
            return out
        with anyio.move_on_after(min(_WAIT_SLICE_S, deadline - anyio.current_time())):
            await _wait_either(changed, ctx.stopping)
    async with ctx.store.transaction() as tx:
        return build_out(await tx.get_build(build.id), agents=agents)


async def _connected_agents(ctx: ServerContext) -> list[AgentRow]:
    async with ctx.store.transaction() as tx:
        return await tx.list_agents()


async def _wait_either(a: anyio.Event, b: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:

        async def wait_b() -> None:
            await b.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(wait_b)
        await a.wait()
        tg.cancel_scope.cancel()


@router.post("/pipelines/{slug}/builds/{number}/cancel", response_model=p.BuildOut)
async def cancel_build(slug: str, number: int, request: Request) -> p.BuildOut:
    """Cancel a build: jobs not yet running are canceled, running ones are stopped by their
    agents and finish as canceled. A finished build is returned unchanged."""
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        try:
            build = await tx.get_build_by_number(slug, number)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        build = await scheduler.cancel_build(tx, build.id)
    ctx.notifier.notify(f"build:{build.id}")
    # Agents running the build's jobs are told at once; without a stream they find out from
    # the job's state.
    for job in build.jobs:
        if job.state == "canceling" and job.agent_id is not None:
            ctx.streams.push(
                job.agent_id,
                p.StreamMessage(type=p.StreamMessageType.CANCEL_JOB, job=p.JobRef(id=job.id)),
            )
    return build_out(build)


@router.get("/jobs/{job_id}", response_model=p.JobOut)
async def get_job(job_id: str, request: Request) -> p.JobOut:
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        try:
            job = await tx.get_job(job_id)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        build = await tx.get_build(job.build_id)
    agents = None if ctx.match_any_agent else await _connected_agents(ctx)
    return next(j for j in build_out(build, agents=agents).jobs if j.id == job_id)


@router.get(
    "/jobs/{job_id}/log",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def get_log(job_id: str, request: Request) -> StreamingResponse:
    """The job's log as the command wrote it (PTY line endings: `\\r\\n`), in offset order.

    `X-Conveyor-Log-Gaps` counts the holes left by chunks that never arrived.
    """
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        try:
            await tx.get_job(job_id)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        index = await tx.chunk_index(job_id)
    gaps = 0
    expected = 0
    for offset, size in index:
        gaps += offset != expected
        expected = offset + size

    async def body() -> AsyncIterator[bytes]:
        offsets = [o for o, _ in index]
        for i in range(0, len(offsets), _LOG_READ_BATCH):
            async with ctx.store.transaction() as tx:
                chunks = await tx.read_chunks(job_id, offsets[i : i + _LOG_READ_BATCH])
            for chunk in chunks:
                yield chunk

    return StreamingResponse(
        body(),
        media_type="application/octet-stream",
        headers={"X-Conveyor-Log-Gaps": str(gaps), "X-Conveyor-Log-Size": str(expected)},
    )
