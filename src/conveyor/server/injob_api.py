"""What a job may do to its own build with its token: meta-data, annotations, steps, cancel.

Every route is under `/agent/v1/jobs/{job_id}/…` and takes that job's token (`auth.job_token`
refuses another job's, and a finished job's, whose token is revoked). A job only ever reaches
its own build: nothing here takes a build id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from conveyor import protocol as p
from conveyor.server import scheduler
from conveyor.server.auth import context, job_token
from conveyor.server.rest_api import annotation_out, announce_cancel
from conveyor.storage import Tx
from conveyor.storage.rows import JobRow, StepRow, TokenRow

router = APIRouter(prefix=p.API_PREFIX, tags=["in-job"])

JobToken = Annotated[TokenRow, Depends(job_token)]

_ANNOTATION_MAX = 1024 * 1024  # bytes of Markdown in one annotation, appends included


def check_meta_data_key(key: str) -> None:
    """Keys are plain text: 1 to 255 characters, no control characters, no surrounding spaces."""
    problem = None
    if not key:
        problem = "a meta-data key cannot be empty"
    elif len(key) > p.META_DATA_MAX_KEY:
        problem = f"a meta-data key has at most {p.META_DATA_MAX_KEY} characters"
    elif key != key.strip():
        problem = f"meta-data key {key!r} starts or ends with a space"
    elif any(ord(c) < 32 or ord(c) == 127 for c in key):
        problem = f"meta-data key {key!r} contains a control character"
    if problem is not None:
        raise HTTPException(422, problem)


async def _live_job(tx: Tx, job_id: str) -> JobRow:
    job = await tx.get_job(job_id)
    if p.JobState(job.state).terminal:
        # The token is revoked when a job finishes, so this is a race with the finish.
        raise HTTPException(409, f"job {job_id} is {job.state}: it can no longer change its build")
    return job


# Keys travel in bodies and query strings, never in the path: a key may hold `/`, `.` or `..`,
# which URL paths would resolve away.
_KEY = Annotated[str, Query(description="the meta-data key")]


@router.put("/jobs/{job_id}/meta-data", status_code=204)
async def set_meta_data(job_id: str, body: p.MetaDataSet, request: Request, _: JobToken) -> None:
    """`conveyor meta-data set`: a build-wide value, seen by every later job of the build (on
    any agent) and in the REST API's `meta_data`. Setting a key again replaces its value."""
    key = body.key
    check_meta_data_key(key)
    if not body.value.strip():
        raise HTTPException(422, f"the value of meta-data key {key!r} is empty")
    if len(body.value.encode()) > p.META_DATA_MAX_VALUE:
        raise HTTPException(
            422, f"the value of meta-data key {key!r} is over {p.META_DATA_MAX_VALUE} bytes"
        )
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        job = await _live_job(tx, job_id)
        await tx.lock_build(job.build_id)
        await tx.set_meta_data(job.build_id, {key: body.value})
    ctx.notifier.notify(f"build:{job.build_id}")


@router.get("/jobs/{job_id}/meta-data", response_model=p.MetaDataValue)
async def get_meta_data(job_id: str, key: _KEY, request: Request, _: JobToken) -> p.MetaDataValue:
    """`conveyor meta-data get / exists`: `value` is null when the build has no such key."""
    check_meta_data_key(key)
    async with context(request).store.transaction() as tx:
        job = await tx.get_job(job_id)
        build = await tx.get_build(job.build_id)
    return p.MetaDataValue(key=key, value=build.meta_data.get(key))


@router.get("/jobs/{job_id}/meta-data-keys", response_model=p.MetaDataKeys)
async def meta_data_keys(job_id: str, request: Request, _: JobToken) -> p.MetaDataKeys:
    """`conveyor meta-data keys`: every key of the build, sorted."""
    async with context(request).store.transaction() as tx:
        job = await tx.get_job(job_id)
        build = await tx.get_build(job.build_id)
    return p.MetaDataKeys(keys=sorted(build.meta_data))


@router.post("/jobs/{job_id}/annotations", response_model=p.AnnotationOut)
async def annotate(
    job_id: str, body: p.AnnotationRequest, request: Request, _: JobToken
) -> p.AnnotationOut:
    """`conveyor annotate`: create the context's annotation, replace it, or with `append` add
    to its body. The Markdown is kept as written."""
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        job = await _live_job(tx, job_id)
        await tx.lock_build(job.build_id)
        before = await tx.get_annotation(job.build_id, body.context)
        size = len(body.body.encode()) + (
            len(before.body.encode()) if body.append and before is not None else 0
        )
        if size > _ANNOTATION_MAX:
            raise HTTPException(
                413, f"annotation {body.context!r} would be over {_ANNOTATION_MAX} bytes"
            )
        style = body.style or (before.style if before is not None else "default")
        row = await tx.annotate(
            job.build_id,
            context=body.context,
            style=style,
            body=body.body,
            append=body.append,
            job_id=job.id,
        )
    ctx.notifier.notify(f"build:{job.build_id}")
    return annotation_out(row)


@router.delete("/jobs/{job_id}/annotations", response_model=p.AnnotationRemoved)
async def remove_annotation(
    job_id: str,
    request: Request,
    _: JobToken,
    context_name: Annotated[str, Query(alias="context", description="the annotation's context")],
) -> p.AnnotationRemoved:
    """`conveyor annotation remove`: `removed` is false when there was none of that context."""
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        job = await _live_job(tx, job_id)
        await tx.lock_build(job.build_id)
        removed = await tx.remove_annotation(job.build_id, context_name)
    ctx.notifier.notify(f"build:{job.build_id}")
    return p.AnnotationRemoved(removed=removed)


def _step_info(step: StepRow) -> p.StepInfo:
    return p.StepInfo(
        id=step.id,
        key=step.key,
        kind=step.kind,
        label=step.label,
        state=step.state,
        build_id=step.build_id,
    )


async def _find_step(tx: Tx, job: JobRow, key: str | None) -> StepRow:
    build = await tx.get_build(job.build_id)
    if key is None:
        return next(s for s in build.steps if s.id == job.step_id)
    found = next((s for s in build.steps if key in (s.key, s.id)), None)
    if found is None:
        # Not 404: to a job, 404 means its own job is gone.
        raise HTTPException(422, f"this build has no step with key {key!r}")
    return found


@router.get("/jobs/{job_id}/step", response_model=p.StepInfo)
async def get_step(
    job_id: str,
    request: Request,
    _: JobToken,
    key: Annotated[str | None, Query(description="a step's key or id; default: the job's")] = None,
) -> p.StepInfo:
    """`conveyor step get`: a step of the job's build."""
    async with context(request).store.transaction() as tx:
        job = await tx.get_job(job_id)
        return _step_info(await _find_step(tx, job, key))


@router.put("/jobs/{job_id}/step", response_model=p.StepInfo)
async def update_step(
    job_id: str,
    body: p.StepUpdate,
    request: Request,
    _: JobToken,
    key: Annotated[str | None, Query(description="a step's key or id; default: the job's")] = None,
) -> p.StepInfo:
    """`conveyor step update label VALUE`: change a step's label as shown for the build."""
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        job = await _live_job(tx, job_id)
        await tx.lock_build(job.build_id)
        step = await _find_step(tx, job, key)
        await tx.update_step(step.id, label=body.value)
        step = await tx.get_step(step.id)
    ctx.notifier.notify(f"build:{job.build_id}")
    return _step_info(step)


@router.post("/jobs/{job_id}/build/cancel", status_code=204)
async def cancel_build(job_id: str, request: Request, _: JobToken) -> None:
    """`conveyor build cancel` from inside a job: cancel the job's own build (this job too)."""
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        job = await _live_job(tx, job_id)
        build = await scheduler.cancel_build(tx, job.build_id)
    announce_cancel(ctx, build)
