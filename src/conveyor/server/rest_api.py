"""REST API v1 for operators, the CLI and the web UI, authenticated by API tokens."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from conveyor import logformat
from conveyor import protocol as p
from conveyor.errors import InvalidStateError, NotFoundError, PipelineError
from conveyor.pipeline import check_graph, parse_pipeline
from conveyor.server import retries, scheduler
from conveyor.server.auth import api_token, context
from conveyor.server.context import ServerContext
from conveyor.server.dispatcher import DEFAULT_QUEUE, matches
from conveyor.server.planner import plan_steps
from conveyor.server.unblock import unblock_step
from conveyor.storage.rows import AgentRow, AnnotationRow, BuildRow, PipelineRow, StepRow

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
            step_id=j.step_id,
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
            soft_failed=j.soft_failed,
            timed_out=j.timed_out,
            created_at=j.created_at,
            runnable_at=j.runnable_at,
            started_at=j.started_at,
            finished_at=j.finished_at,
        )
        for j in build.jobs
    ]
    fingerprint = "|".join(
        [
            build.state,
            *(f"{j.id}:{j.state}:{j.exit_status}:{j.log_size}:{j.soft_failed}" for j in build.jobs),
            *(f"{s.id}:{s.state}:{s.label}" for s in build.steps),
            *(f"{k}={v}" for k, v in sorted(build.meta_data.items())),
        ]
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
        steps=[step_out(s) for s in build.steps],
        meta_data=build.meta_data,
        warnings=warnings or [],
        # A build listed without its jobs has no version to wait on.
        version=hashlib.sha256(fingerprint.encode()).hexdigest()[:16] if build.steps else "",
    )


def step_out(step: StepRow) -> p.StepOut:
    config = step.config
    triggered = config.get("triggered_build")
    blocking = step.kind in ("block", "input")
    return p.StepOut(
        id=step.id,
        key=step.key,
        kind=step.kind,
        label=step.label,
        state=step.state,
        error=config.get("error"),
        triggered_build=(
            p.BuildRef(pipeline=config["trigger"], number=triggered["number"], id=triggered["id"])
            if step.kind == "trigger" and isinstance(triggered, dict)
            else None
        ),
        prompt=config.get("prompt") if blocking else None,
        fields=[_field_out(f) for f in config.get("fields", [])] if blocking else [],
        depends_on=list(step.depends_on),
    )


def _field_out(field: dict[str, Any]) -> p.FieldOut:
    default = field.get("default")
    if isinstance(default, list | tuple):
        default = [str(v) for v in default]
    elif default is not None:
        default = str(default)
    return p.FieldOut(
        kind=field.get("kind", "text"),
        key=field["key"],
        label=field.get("label") or field["key"],
        hint=field.get("hint"),
        required=bool(field.get("required", True)),
        default=default,
        options=[
            p.FieldOption(label=str(o.get("label", o["value"])), value=str(o["value"]))
            for o in field.get("options", [])
        ],
        multiple=bool(field.get("multiple", False)),
        format=field.get("format"),
    )


def pipeline_out(row: PipelineRow) -> p.PipelineOut:
    return p.PipelineOut(
        id=row.id,
        slug=row.slug,
        name=row.name,
        repository=row.repository,
        default_branch=row.default_branch,
        steps=row.steps,
        steps_file=row.steps_file,
    )


def _check_slug(slug: str) -> None:
    if len(slug) > 100 or not slug.replace("-", "").replace("_", "").isalnum():
        raise HTTPException(
            422, "pipeline slug may hold only letters, digits, '-' and '_' (at most 100)"
        )


def check_steps(text: str, *, filename: str) -> None:
    """Check a pipeline's stored steps as written: they parse, keys are unique, every
    `depends_on` names a step, there is no cycle. Raises PipelineError. CPU work only."""
    pipeline = parse_pipeline(text, filename=filename)
    check_graph(pipeline, filename=filename)
    plan_steps(pipeline, filename=filename)


async def create_build(
    ctx: ServerContext, slug: str, body: p.CreateBuildRequest, *, source: str = "api"
) -> tuple[BuildRow, list[str]]:
    """Validate the whole pipeline first, then store the build in one transaction.

    Without `pipeline` text the build runs the pipeline's stored steps; a branch not given is
    the pipeline's default branch. Raises PipelineError.
    """
    stored: PipelineRow | None = None
    if body.pipeline is None or "branch" not in body.model_fields_set:
        async with ctx.store.transaction() as tx:
            try:
                stored = await tx.get_pipeline(slug)
            except NotFoundError:
                stored = None
    text, filename = body.pipeline, body.filename
    if text is None:
        if stored is None:
            raise HTTPException(
                422,
                f"there is no pipeline {slug!r} with stored steps: send the pipeline text as "
                f"`pipeline`, or store steps first (`conveyor pipeline set {slug} --steps FILE`)",
            )
        if not stored.steps:
            raise HTTPException(
                422,
                f"pipeline {slug!r} has no stored steps: send the pipeline text as `pipeline`, "
                f"or store steps first (`conveyor pipeline set {slug} --steps FILE`)",
            )
        text = stored.steps
        if "filename" not in body.model_fields_set:
            filename = f"{slug} (stored steps)"
    branch = body.branch
    if "branch" not in body.model_fields_set and stored is not None:
        branch = stored.default_branch
    # Parsing is CPU work proportional to the document: keep it off the event loop.
    prepared = await anyio.to_thread.run_sync(
        functools.partial(
            scheduler.prepare_build,
            slug,
            text,
            filename=filename,
            branch=branch,
            commit=body.commit,
            message=body.message,
            env=body.env,
        )
    )
    async with ctx.store.transaction() as tx:
        build = await scheduler.store_build(tx, prepared, source=source)
    ctx.notifier.notify(f"build:{build.id}")
    ctx.streams.kick()
    return build, prepared.warnings


@router.post("/pipelines/{slug}/builds", response_model=p.BuildOut, status_code=201)
async def post_build(slug: str, body: p.CreateBuildRequest, request: Request) -> p.BuildOut:
    """Create a build from the pipeline text given, or from the pipeline's stored steps."""
    _check_slug(slug)
    try:
        build, warnings = await create_build(context(request), slug, body)
    except PipelineError as exc:
        raise HTTPException(422, str(exc)) from None
    return build_out(build, warnings)


@router.put("/pipelines/{slug}", response_model=p.PipelineOut)
async def put_pipeline(slug: str, body: p.PipelineIn, request: Request) -> p.PipelineOut:
    """Create the pipeline, or change the fields given. `steps` are checked (parsed, keys
    unique, dependencies known, no cycle) before anything is stored: a 422 names the line."""
    _check_slug(slug)
    given = body.model_fields_set - {"filename"}
    values: dict[str, Any] = {}
    for name in ("name", "repository", "default_branch", "steps_file"):
        if name in given:
            value = getattr(body, name)
            if value is None:
                raise HTTPException(422, f"invalid request: {name}: may not be null")
            values[name] = value
    if "steps" in given:
        if body.steps is not None:
            try:
                await anyio.to_thread.run_sync(
                    functools.partial(check_steps, body.steps, filename=body.filename)
                )
            except PipelineError as exc:
                raise HTTPException(422, str(exc)) from None
        values["steps"] = body.steps
    async with context(request).store.transaction() as tx:
        row = await tx.upsert_pipeline(slug, **values)
    return pipeline_out(row)


@router.get("/pipelines", response_model=list[p.PipelineOut])
async def list_pipelines(request: Request) -> list[p.PipelineOut]:
    async with context(request).store.transaction() as tx:
        rows = await tx.list_pipelines()
    return [pipeline_out(r) for r in rows]


@router.get("/pipelines/{slug}", response_model=p.PipelineOut)
async def get_pipeline(slug: str, request: Request) -> p.PipelineOut:
    async with context(request).store.transaction() as tx:
        try:
            row = await tx.get_pipeline(slug)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
    return pipeline_out(row)


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


@router.get("/pipelines/{slug}/builds/{number}/annotations", response_model=list[p.AnnotationOut])
async def list_annotations(slug: str, number: int, request: Request) -> list[p.AnnotationOut]:
    """The build's annotations (`conveyor annotate` in its jobs), oldest context first."""
    async with context(request).store.transaction() as tx:
        try:
            build = await tx.get_build_by_number(slug, number)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        rows = await tx.list_annotations(build.id)
    return [annotation_out(row) for row in rows]


def annotation_out(row: AnnotationRow) -> p.AnnotationOut:
    return p.AnnotationOut(
        context=row.context,
        style=row.style,
        body=row.body,
        job_id=row.job_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


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
    announce_cancel(ctx, build)
    return build_out(build)


def announce_cancel(ctx: ServerContext, build: BuildRow) -> None:
    """After a build was canceled: watchers hear of it, and the agents running its jobs are
    told at once (without a stream, they find out from the job's state)."""
    ctx.notifier.notify(f"build:{build.id}")
    for job in build.jobs:
        if job.state == "canceling" and job.agent_id is not None:
            ctx.streams.push(
                job.agent_id,
                p.StreamMessage(type=p.StreamMessageType.CANCEL_JOB, job=p.JobRef(id=job.id)),
            )


@router.post("/pipelines/{slug}/builds/{number}/steps/{step}/unblock", response_model=p.BuildOut)
async def unblock(
    slug: str, number: int, step: str, body: p.UnblockRequest, request: Request
) -> p.BuildOut:
    """Unblock a blocked block or input step (`step`: its id or key). The field values are
    checked against the step's fields and become build meta-data; the build carries on.

    404: no such build or step; 409: the step is not blocked (yet); 422: bad field values.
    """
    ctx = context(request)
    try:
        async with ctx.store.transaction() as tx:
            build = await tx.get_build_by_number(slug, number)
            build = await unblock_step(tx, build.id, step, dict(body.fields))
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except InvalidStateError as exc:
        raise HTTPException(409, str(exc)) from None
    except PipelineError as exc:
        # Bad field values: the problem is about the request, not a pipeline file.
        raise HTTPException(422, exc.problem if exc.line is None else str(exc)) from None
    ctx.notifier.notify(f"build:{build.id}")
    ctx.streams.kick()
    return build_out(build)


@router.post("/jobs/{job_id}/retry", response_model=p.JobOut, status_code=201)
async def retry(job_id: str, request: Request) -> p.JobOut:
    """Retry a finished job by hand: a new attempt, returned. Steps that did not run because
    it failed run if the new attempt passes. 409 when its step does not allow it."""
    ctx = context(request)
    try:
        async with ctx.store.transaction() as tx:
            job = await retries.retry_job(tx, job_id)
            build = await tx.get_build(job.build_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except InvalidStateError as exc:
        raise HTTPException(409, str(exc)) from None
    ctx.notifier.notify(f"build:{build.id}")
    ctx.streams.kick()
    agents = None if ctx.match_any_agent else await _connected_agents(ctx)
    return next(j for j in build_out(build, agents=agents).jobs if j.id == job.id)


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
async def get_log(
    job_id: str,
    request: Request,
    timestamps: Annotated[
        logformat.Mode,
        Query(
            description="`strip` (default): the output as the command wrote it; `render`: "
            "each line prefixed with its UTC time; `raw`: the stored bytes, markers included"
        ),
    ] = "strip",
) -> StreamingResponse:
    """The job's log as the command wrote it (PTY line endings: `\\r\\n`), in offset order.

    `X-Conveyor-Log-Gaps` counts the holes left by chunks that never arrived;
    `X-Conveyor-Log-Size` is the size of the log as stored, timestamp markers included.
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
        # Markers may be split across chunks and read batches: the reader holds a partial
        # one until the next chunk completes it. A hole ends whatever was held.
        reader = logformat.Reader(timestamps)
        offsets = [o for o, _ in index]
        end = 0
        for i in range(0, len(offsets), _LOG_READ_BATCH):
            async with ctx.store.transaction() as tx:
                chunks = await tx.read_chunks(job_id, offsets[i : i + _LOG_READ_BATCH])
            for offset, chunk in zip(offsets[i : i + _LOG_READ_BATCH], chunks, strict=True):
                out = reader.flush() if offset != end else b""
                out += reader.feed(chunk)
                end = offset + len(chunk)
                if out:
                    yield out
        if rest := reader.flush():
            yield rest

    return StreamingResponse(
        body(),
        media_type="application/octet-stream",
        headers={"X-Conveyor-Log-Gaps": str(gaps), "X-Conveyor-Log-Size": str(expected)},
    )
