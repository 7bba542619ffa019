"""Agent API v1 (DESIGN §7): what agents call to register, get work, stream logs and finish."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from conveyor import protocol as p
from conveyor.errors import ConflictError, InvalidStateError, NotFoundError, PipelineError
from conveyor.server import jobenv, retries, scheduler
from conveyor.server.auth import agent_token, context, job_token, registration_token
from conveyor.server.context import ServerContext
from conveyor.server.dispatcher import claim_job, release_agent_jobs
from conveyor.server.jobspec import job_spec
from conveyor.server.uploads import upload_pipeline as upload_steps
from conveyor.storage import Tx
from conveyor.storage.queries.base import utcnow
from conveyor.storage.rows import JobRow, TokenRow

router = APIRouter(prefix=p.API_PREFIX, tags=["agent"])

AgentToken = Annotated[TokenRow, Depends(agent_token)]
JobToken = Annotated[TokenRow, Depends(job_token)]

_LIVE_JOB_STATES = ("accepted", "running", "canceling")
# A job may add steps to its build while it runs (not once it is being canceled). `assigned`:
# a job pushed with its token runs before its start call has landed.
_UPLOADING_JOB_STATES = ("assigned", "accepted", "running")
# Results of the latest uploads a step made, by upload id: a retried upload is not repeated.
_UPLOADS_KEPT = 20


def _agent_id(token: TokenRow) -> str:
    assert token.agent_id is not None
    return token.agent_id


@router.post("/register", response_model=p.RegisterResponse)
async def register(
    body: p.RegisterRequest,
    request: Request,
    _: Annotated[TokenRow, Depends(registration_token)],
) -> p.RegisterResponse:
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        agent_id = await tx.insert_agent(
            name=body.name,
            hostname=body.hostname,
            os=body.os,
            arch=body.arch,
            version=body.version,
            pid=body.pid,
            tags=body.tags,
            priority=body.priority,
            process_id=body.process_id,
        )
        access_token = await tx.create_token("agent", agent_id=agent_id)
    return p.RegisterResponse(
        id=agent_id,
        name=body.name,
        access_token=access_token,
        ping_interval=ctx.ping_interval,
        heartbeat_interval=ctx.heartbeat_interval,
        job_status_interval=ctx.job_status_interval,
    )


@router.post("/connect", status_code=204)
async def connect(request: Request, token: AgentToken) -> None:
    async with context(request).store.transaction() as tx:
        await tx.set_agent_state(_agent_id(token), "connected")


@router.post("/disconnect", status_code=204)
async def disconnect(request: Request, token: AgentToken) -> None:
    ctx = context(request)
    agent_id = _agent_id(token)
    async with ctx.store.transaction() as tx:
        builds = await release_agent_jobs(tx, agent_id, p.SignalReason.AGENT_STOP)
        await tx.set_agent_state(agent_id, "disconnected", current_job_id=None)
        await tx.revoke_agent_tokens(agent_id)
    for build_id in builds:
        ctx.notifier.notify(f"build:{build_id}")
    ctx.streams.kick()


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def stream(request: Request, token: AgentToken) -> StreamingResponse:
    """One long-lived stream per worker: newline-delimited `StreamMessage` JSON.

    It opens with `resume`, then carries `job_assigned`, `cancel_job`, `pause`, `resume` and
    `disconnect` as they happen, and a `keepalive` whenever nothing happened for
    `STREAM_KEEPALIVE_S` seconds, so a dead stream is noticed within seconds.
    """
    ctx = context(request)
    agent_id = _agent_id(token)
    async with ctx.store.transaction() as tx:
        await tx.touch_agent(agent_id)
        agent = await tx.get_agent(agent_id)
        held = await tx.jobs_of_agent(agent_id, ["assigned", "accepted", "running", "canceling"])
    messages = ctx.streams.open(agent, busy=bool(held))

    async def body() -> AsyncIterator[bytes]:
        try:
            yield _line(p.StreamMessage(type=p.StreamMessageType.RESUME))
            # A job assigned before this stream opened (by a ping, or to a stream that broke)
            # is offered again: the agent accepts what it has not accepted yet.
            for job in held:
                if job.state == "assigned":
                    yield _line(
                        p.StreamMessage(
                            type=p.StreamMessageType.JOB_ASSIGNED, job=p.JobRef(id=job.id)
                        )
                    )
            while True:
                with anyio.move_on_after(p.STREAM_KEEPALIVE_S):
                    try:
                        message = await messages.receive()
                    except (anyio.EndOfStream, anyio.ClosedResourceError):
                        return  # replaced by a newer stream, or the server is stopping
                    yield _line(message)
                    continue
                yield _line(p.StreamMessage(type=p.StreamMessageType.KEEPALIVE))
        finally:
            ctx.streams.close(agent_id, messages)

    return StreamingResponse(body(), media_type="application/x-ndjson")


def _line(message: p.StreamMessage) -> bytes:
    return message.model_dump_json(exclude_defaults=True).encode() + b"\n"


@router.post("/heartbeat", response_model=p.HeartbeatResponse)
async def heartbeat(
    body: p.HeartbeatRequest, request: Request, token: AgentToken
) -> p.HeartbeatResponse:
    now = utcnow()
    async with context(request).store.transaction() as tx:
        await tx.record_heartbeat(_agent_id(token), now)
    return p.HeartbeatResponse(sent_at=body.sent_at, received_at=now)


@router.get("/ping", response_model=p.PingResponse)
async def ping(request: Request, token: AgentToken) -> p.PingResponse:
    ctx = context(request)
    agent_id = _agent_id(token)
    order = ctx.orders.pop(agent_id, None)
    if order is not None and order.action == p.PingAction.DISCONNECT:
        return order
    async with ctx.store.transaction() as tx:
        agent = await tx.get_agent(agent_id)
        await tx.touch_agent(agent_id)
        job = None if agent.paused else await claim_job(tx, agent, match_any=ctx.match_any_agent)
    answer = order or p.PingResponse()
    if agent.paused:
        answer.action = p.PingAction.PAUSE
    if job is not None:
        answer.job = p.JobRef(id=job.id)
    return answer


@router.put("/jobs/{job_id}/acquire", response_model=p.JobRef)
async def acquire(job_id: str, request: Request, token: AgentToken) -> p.JobRef:
    """Ask for one named job (`--acquire-job`): it is assigned to this agent if it is runnable.

    423 (with Retry-After) while the job waits for its dependencies; 409 once it is taken,
    running or over.
    """
    ctx = context(request)
    agent_id = _agent_id(token)
    async with ctx.store.transaction() as tx:
        try:
            job = await tx.get_job(job_id)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        if job.state == "assigned" and job.agent_id == agent_id:
            return p.JobRef(id=job_id)
        if job.state == "pending":
            raise HTTPException(
                423, "the job is waiting for its dependencies", {"Retry-After": "1"}
            )
        if not await tx.transition_job(
            job_id, ["scheduled"], "assigned", agent_id=agent_id, assigned_at=utcnow()
        ):
            raise HTTPException(409, f"the job is {job.state}: it cannot be acquired")
        await tx.set_agent_job(agent_id, job_id)
    ctx.streams.busy(agent_id)
    return p.JobRef(id=job_id)


@router.put("/jobs/{job_id}/accept", response_model=p.JobSpec)
async def accept(job_id: str, request: Request, token: AgentToken) -> p.JobSpec:
    ctx = context(request)
    agent_id = _agent_id(token)
    async with ctx.store.transaction() as tx:
        try:
            job = await tx.get_job(job_id)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        if job.agent_id != agent_id:
            raise HTTPException(409, "this job is not assigned to you")
        if job.state != "accepted":  # accepted: a retry whose first answer was lost
            try:
                await tx.require_transition(job_id, ["assigned"], "accepted", accepted_at=utcnow())
            except InvalidStateError as exc:
                raise HTTPException(409, str(exc)) from None
        # A new token: one given before (an answer that was lost, or the push) is revoked.
        spec = await job_spec(ctx, tx, job, await tx.get_agent(agent_id))
    ctx.streams.busy(agent_id)
    return spec


@router.put("/jobs/{job_id}/start", status_code=204)
async def start(job_id: str, body: p.StartRequest, request: Request, token: JobToken) -> None:
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        # On every job's critical path: one compare-and-set when the job is this agent's to
        # start (assigned or accepted, and held by the token's agent); the job is read only
        # when it is not, to say why.
        build_id = None
        if token.agent_id is not None:
            build_id = await tx.start_job(job_id, token.agent_id, body.started_at)
        if build_id is None:
            job = await tx.get_job(job_id)
            # The token was checked in a transaction of its own: the job may have been taken
            # back and given to another agent since. Only the agent holding it may start it.
            if token.agent_id is not None and job.agent_id != token.agent_id:
                raise HTTPException(409, f"job {job_id} is no longer assigned to this agent")
            if job.state == "running":
                return  # a retry whose first answer was lost
            values: dict[str, Any] = {"started_at": body.started_at}
            if job.state == "assigned":
                # Pushed on the agent's stream with its token: started without an accept.
                values["accepted_at"] = utcnow()
            try:
                await tx.require_transition(
                    job_id, ["accepted", "assigned"], "running", held_by=job.agent_id, **values
                )
            except InvalidStateError as exc:
                raise HTTPException(409, str(exc)) from None
            build_id = job.build_id
        # A job starting changes no step (its step is already running): the build only goes
        # from `scheduled` to `running`. One statement, not a walk of the whole build.
        await tx.mark_build_started(build_id, utcnow())
    ctx.notifier.notify(f"build:{build_id}")


@router.post("/jobs/{job_id}/chunks", response_model=p.ChunkAck)
async def upload_chunk(
    job_id: str,
    request: Request,
    _: JobToken,
    sequence: Annotated[int, Query(ge=1, le=p.INT32_MAX)],
    offset: Annotated[int, Query(ge=0, le=p.INT64_MAX)],
    size: Annotated[int, Query(ge=0, le=p.INT32_MAX)],
) -> p.ChunkAck:
    ctx = context(request)
    if size > ctx.chunk_max_size:
        raise HTTPException(413, f"chunk of {size} bytes exceeds {ctx.chunk_max_size}")
    data: bytes | bytearray
    if request.headers.get("content-encoding", "").lower() == "gzip":
        data = _gunzip(await _read_gzipped(request, limit=size), limit=size)
        if len(data) != size:
            raise HTTPException(400, f"size says {size} bytes but the body has {len(data)}")
    else:
        data = await _read_body(request, size=size)
    async with ctx.store.transaction() as tx:
        try:
            # The state check rides in the insert: the job is read only when nothing was
            # stored (a retry, a conflict, a job that has ended). A stored chunk is counted
            # in the job's log_size in the same transaction.
            stored = await tx.insert_chunk(
                job_id, sequence, offset, data, job_states=_LIVE_JOB_STATES
            )
        except (ConflictError, InvalidStateError) as exc:
            raise HTTPException(409, str(exc)) from None
    return p.ChunkAck(sequence=sequence, offset=offset, size=size, stored=stored)


async def _read_body(request: Request, *, size: int) -> bytearray:
    """The body, read into one buffer of the `size` it promised: no copies of a chunk in
    memory but this one, and a body that does not match `size` is refused."""
    body = bytearray(size)
    with memoryview(body) as view:
        n = 0
        async for piece in request.stream():
            end = n + len(piece)
            if end > size:
                raise HTTPException(400, f"body is larger than the {size} bytes its size says")
            view[n:end] = piece
            n = end
    if n != size:
        raise HTTPException(400, f"size says {size} bytes but the body has {n}")
    return body


async def _read_gzipped(request: Request, *, limit: int) -> bytes:
    """A gzipped body, refused as soon as it grows past `limit` plus gzip's overhead."""
    cap = limit + 1024 + limit // 100
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > cap:
            raise HTTPException(400, f"body is larger than the {limit} bytes its size says")
    return bytes(body)


def _gunzip(data: bytes, *, limit: int) -> bytes:
    """Decompress at most `limit` + 1 bytes: a small body may not expand without bound."""
    try:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise HTTPException(400, "body is not valid gzip") from None
    # Only a complete member has had its CRC checked; one member per chunk.
    if len(out) <= limit and (not inflater.eof or inflater.unused_data):
        raise HTTPException(400, "body is not valid gzip (cut short, or more than one member)")
    return out


@router.get("/jobs/{job_id}", response_model=p.JobStateResponse)
async def job_state(job_id: str, request: Request, _: JobToken) -> p.JobStateResponse:
    async with context(request).store.transaction() as tx:
        job = await tx.get_job(job_id)
    return p.JobStateResponse(id=job.id, state=p.JobState(job.state))


@router.put("/jobs/{job_id}/finish", status_code=204)
async def finish(job_id: str, body: p.FinishRequest, request: Request, _: JobToken) -> None:
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        job = await tx.get_job(job_id)
        if job.state not in _LIVE_JOB_STATES:
            raise HTTPException(409, f"job is {job.state}: it cannot be finished")
        to_state = "canceled" if job.state == "canceling" else "finished"
        try:
            await tx.require_transition(
                job_id,
                [job.state],
                to_state,
                exit_status=body.exit_status,
                signal=body.signal,
                signal_reason=body.signal_reason.value if body.signal_reason else None,
                chunks_failed_count=body.chunks_failed_count,
                finished_at=body.finished_at,
            )
        except InvalidStateError as exc:
            raise HTTPException(409, str(exc)) from None
        await tx.revoke_job_tokens(job_id)
        await retries.retry_if_asked(tx, await tx.get_job(job_id))
        agent = None
        if job.agent_id is not None:
            await tx.set_agent_job(job.agent_id, None, succeeded=body.exit_status == 0)
            agent = await tx.get_agent(job.agent_id)
        await scheduler.job_ended(tx, job)
    ctx.notifier.notify(f"build:{job.build_id}")
    if agent is not None:
        ctx.streams.job_done(agent)
    else:
        ctx.streams.kick()


@router.post("/jobs/{job_id}/pipelines", response_model=p.PipelineUploadResponse, status_code=201)
async def upload_pipeline(
    job_id: str, body: p.PipelineUploadRequest, request: Request, _: JobToken
) -> p.PipelineUploadResponse:
    """`conveyor pipeline upload`: add steps to the job's build, right after the job's step.

    The text is interpolated against the job's environment. A `wait` after the uploading step
    also waits for the new steps. With `replace`, the build's steps that have not started are
    removed first. A rejected pipeline is a 422 naming file and line, and nothing is stored.
    Only an accepted or running job may upload (409 otherwise).
    """
    ctx = context(request)
    try:
        async with ctx.store.transaction() as tx:
            build_id, answer = await _upload(ctx, tx, job_id, body)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except InvalidStateError as exc:
        raise HTTPException(409, str(exc)) from None
    except PipelineError as exc:
        raise HTTPException(422, str(exc)) from None
    ctx.notifier.notify(f"build:{build_id}")
    ctx.streams.kick()
    return answer


async def _upload(
    ctx: ServerContext, tx: Tx, job_id: str, body: p.PipelineUploadRequest
) -> tuple[str, p.PipelineUploadResponse]:
    job = await tx.get_job(job_id)
    await tx.lock_build(job.build_id)
    job = await tx.get_job(job_id)
    if job.state not in _UPLOADING_JOB_STATES:
        raise InvalidStateError(f"job is {job.state}: it cannot upload steps")
    before = await tx.get_build(job.build_id)
    step = next(s for s in before.steps if s.id == job.step_id)
    uploads: dict[str, Any] = dict(step.config.get("uploads") or {})
    if body.upload_id is not None and body.upload_id in uploads:
        # A retry of an upload that was stored: answer as the first time, add nothing.
        return job.build_id, p.PipelineUploadResponse.model_validate(uploads[body.upload_id])
    env = await _job_env(ctx, tx, job)
    after, warnings = await upload_steps(
        tx, job, body.pipeline, filename=body.filename, env=env, replace=body.replace
    )
    old_ids = {s.id for s in before.steps}
    new_ids = {s.id for s in after.steps}
    answer = p.PipelineUploadResponse(
        steps_added=len(new_ids - old_ids), steps_removed=len(old_ids - new_ids), warnings=warnings
    )
    if body.upload_id is not None:
        uploads[body.upload_id] = answer.model_dump(mode="json")
        step = await tx.get_step(step.id)
        kept = dict(list(uploads.items())[-_UPLOADS_KEPT:])
        await tx.update_step(step.id, config={**step.config, "uploads": kept})
    return job.build_id, answer


async def _job_env(ctx: ServerContext, tx: Tx, job: JobRow) -> dict[str, str]:
    """What the job's process sees of the server's env: build env, step env, Conveyor facts."""
    build = await tx.get_build(job.build_id)
    step = next(s for s in build.steps if s.id == job.step_id)
    if job.agent_id is None:
        return {**build.env, **job.env}
    agent = await tx.get_agent(job.agent_id)
    return jobenv.job_env(build, step, job, agent, endpoint=ctx.external_url)
