"""Artifact endpoints: jobs upload and download with their token; the REST API lists them.

Agent API (the job's own token, which must belong to `{job_id}`):

    PUT /agent/v1/jobs/{job_id}/artifacts?path=&size=&sha256=    the file, streamed
    GET /agent/v1/jobs/{job_id}/artifacts?query=&step=&build=    the build's artifacts
    GET /agent/v1/jobs/{job_id}/artifacts/{artifact_id}          one artifact's content

REST API (an API token):

    GET /api/v1/pipelines/{slug}/builds/{number}/artifacts?query=&step=
    GET /api/v1/artifacts/{artifact_id}
    GET /api/v1/artifacts/{artifact_id}/download

A job reads only its own build's artifacts: a job token never opens another build's data.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from conveyor import protocol as p
from conveyor.artifact_paths import compile_glob, path_problem
from conveyor.server.artifact_store import ArtifactStore, ContentError
from conveyor.server.auth import api_token, context, job_token
from conveyor.server.context import ServerContext
from conveyor.storage.rows import ArtifactRow, JobRow, TokenRow

agent_router = APIRouter(prefix=p.API_PREFIX, tags=["artifacts"])
rest_router = APIRouter(prefix=p.REST_PREFIX, tags=["artifacts"], dependencies=[Depends(api_token)])

JobToken = Annotated[TokenRow, Depends(job_token)]

# A job may upload while it runs, and while it is being canceled (its command may still be
# saving what it has); once finished its token is revoked anyway.
# `assigned`: a job pushed with its token runs before its start call has landed.
_UPLOADING_JOB_STATES = ("assigned", "accepted", "running", "canceling")
_CONTENT_TYPE = r"^[\w.+-]+/[\w.+-]+$"

_QueryParam = Annotated[
    str | None,
    Query(
        description="a glob over artifact paths: `*` and `?` within a directory, `**` across "
        "directories; none: every artifact"
    ),
]
_StepParam = Annotated[
    str | None, Query(description="only artifacts of the jobs of the step with this key (or id)")
]
_OCTET_STREAM_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_CONTENT_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}}
}


def _store(ctx: ServerContext) -> ArtifactStore:
    if ctx.artifacts is None:
        raise HTTPException(503, "this server has no artifact store")
    return ctx.artifacts


def artifact_out(row: ArtifactRow) -> p.ArtifactOut:
    return p.ArtifactOut(
        id=row.id,
        build_id=row.build_id,
        job_id=row.job_id,
        step_id=row.step_id,
        step_key=row.step_key,
        path=row.path,
        size=row.size,
        sha256=row.sha256,
        content_type=row.content_type,
        created_at=row.created_at,
    )


async def _uploading_job(ctx: ServerContext, job_id: str) -> JobRow:
    async with ctx.store.transaction() as tx:
        job = await tx.get_job(job_id)
    if job.state not in _UPLOADING_JOB_STATES:
        raise HTTPException(409, f"job is {job.state}: it cannot upload artifacts")
    return job


@agent_router.put(
    "/jobs/{job_id}/artifacts",
    response_model=p.ArtifactOut,
    status_code=201,
    openapi_extra=_OCTET_STREAM_BODY,
)
async def upload_artifact(
    job_id: str,
    request: Request,
    _: JobToken,
    path: Annotated[str, Query(description="relative to the directory the upload runs in")],
    size: Annotated[int, Query(ge=0, le=p.INT64_MAX, description="bytes in the body")],
    sha256: Annotated[str, Query(pattern="^[0-9a-f]{64}$", description="of the body, hex")],
    content_type: Annotated[str, Query(max_length=255, pattern=_CONTENT_TYPE)] = (
        "application/octet-stream"
    ),
) -> p.ArtifactOut:
    """Store the body as the job's artifact at `path`; uploading a path again replaces it.

    The body is streamed to the artifact store and checked against `size` and `sha256` before
    it is kept. Refused before the body is read: a path that is absolute, goes up (`..`) or is
    not normalized (422), and a `size` over the server's limit (413).
    """
    ctx = context(request)
    store = _store(ctx)
    problem = path_problem(path)
    if problem is not None:
        raise HTTPException(422, f"artifact path {path!r} {problem}")
    if size > ctx.artifact_max_size:
        raise HTTPException(
            413,
            f"artifact {path!r} is {size} bytes, over this server's limit of "
            f"{ctx.artifact_max_size} bytes per artifact (artifact-max-size)",
        )
    await _uploading_job(ctx, job_id)
    try:
        await store.put(request.stream(), size=size, sha256=sha256)
    except ContentError as exc:
        raise HTTPException(400, f"artifact {path!r} was not stored: {exc}") from None
    except ClientDisconnect:
        # The uploader went away (it retries from the start); nothing was kept.
        raise HTTPException(400, f"the upload of {path!r} was cut short") from None
    # Checked again: the upload may have taken a while.
    job = await _uploading_job(ctx, job_id)
    async with ctx.store.transaction() as tx:
        row = await tx.put_artifact(
            build_id=job.build_id,
            job_id=job.id,
            step_id=job.step_id,
            path=path,
            size=size,
            sha256=sha256,
            content_type=content_type,
        )
    return artifact_out(row)


@agent_router.get("/jobs/{job_id}/artifacts", response_model=list[p.ArtifactOut])
async def search_artifacts(
    job_id: str,
    request: Request,
    _: JobToken,
    query: _QueryParam = None,
    step: _StepParam = None,
    build: Annotated[
        str | None, Query(description="the job's own build id; any other build is refused (403)")
    ] = None,
) -> list[p.ArtifactOut]:
    """The artifacts of the job's build that match, by path (oldest first for one path)."""
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        job = await tx.get_job(job_id)
        if build is not None and build != job.build_id:
            raise HTTPException(
                403,
                f"build {build} is not this job's build: a job reads only the artifacts of its "
                "own build",
            )
        rows = await tx.list_artifacts(job.build_id, step=step)
    return [artifact_out(r) for r in _matching(rows, query)]


@agent_router.get(
    "/jobs/{job_id}/artifacts/{artifact_id}",
    response_class=StreamingResponse,
    responses=_CONTENT_ANSWER,
)
async def download_artifact(
    job_id: str, artifact_id: str, request: Request, _: JobToken
) -> StreamingResponse:
    """The artifact's content, streamed; only an artifact of the job's own build (403)."""
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        job = await tx.get_job(job_id)
        row = await tx.get_artifact(artifact_id)
    if row.build_id != job.build_id:
        raise HTTPException(
            403,
            f"artifact {artifact_id} belongs to another build: a job reads only the artifacts "
            "of its own build",
        )
    return await _content(ctx, row)


@rest_router.get("/pipelines/{slug}/builds/{number}/artifacts", response_model=list[p.ArtifactOut])
async def list_build_artifacts(
    slug: str,
    number: int,
    request: Request,
    query: _QueryParam = None,
    step: _StepParam = None,
) -> list[p.ArtifactOut]:
    """A build's artifacts, by path (oldest first for one path)."""
    async with context(request).store.transaction() as tx:
        build = await tx.get_build_by_number(slug, number)
        rows = await tx.list_artifacts(build.id, step=step)
    return [artifact_out(r) for r in _matching(rows, query)]


@rest_router.get("/artifacts/{artifact_id}", response_model=p.ArtifactOut)
async def get_artifact(artifact_id: str, request: Request) -> p.ArtifactOut:
    async with context(request).store.transaction() as tx:
        return artifact_out(await tx.get_artifact(artifact_id))


@rest_router.get(
    "/artifacts/{artifact_id}/download",
    response_class=StreamingResponse,
    responses=_CONTENT_ANSWER,
)
async def download(artifact_id: str, request: Request) -> StreamingResponse:
    """The artifact's content, streamed, as an attachment."""
    ctx = context(request)
    async with ctx.store.transaction() as tx:
        row = await tx.get_artifact(artifact_id)
    return await _content(ctx, row)


def _matching(rows: list[ArtifactRow], query: str | None) -> list[ArtifactRow]:
    if query is None:
        return rows
    try:
        pattern = compile_glob(query)
    except ValueError as exc:
        raise HTTPException(422, f"query {exc}") from None
    return [r for r in rows if pattern.fullmatch(r.path)]


async def _content(ctx: ServerContext, row: ArtifactRow) -> StreamingResponse:
    store = _store(ctx)
    if not await store.exists(row.sha256):
        raise HTTPException(
            410, f"the content of artifact {row.path!r} ({row.sha256}) is gone from the store"
        )
    name = row.path.rsplit("/", 1)[-1]
    headers = {
        "Content-Length": str(row.size),
        p.ARTIFACT_SHA256_HEADER: row.sha256,
        "ETag": f'"{row.sha256}"',
        # Content a job uploaded is never rendered as a page of this server's origin.
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }
    return StreamingResponse(store.open(row.sha256), media_type=row.content_type, headers=headers)


router = APIRouter()
router.include_router(agent_router)
router.include_router(rest_router)
