"""Request authentication: `Authorization: Token <t>` (or `Bearer <t>`), checked in the store."""

from __future__ import annotations

from fastapi import HTTPException, Request

from conveyor.errors import AuthError
from conveyor.server.context import ServerContext
from conveyor.storage.rows import TokenRow


def context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


def _token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() not in ("token", "bearer") or not value.strip():
        raise HTTPException(401, "missing Authorization: Token <token> header")
    return value.strip()


async def authenticate(request: Request, *kinds: str) -> TokenRow:
    token = _token(request)
    try:
        async with context(request).store.transaction() as tx:
            return await tx.authenticate(token, *kinds)
    except AuthError as exc:
        raise HTTPException(401, f"{exc}: expected a {' or '.join(kinds)} token") from None


async def registration_token(request: Request) -> TokenRow:
    return await authenticate(request, "registration")


async def agent_token(request: Request) -> TokenRow:
    return await authenticate(request, "agent")


async def api_token(request: Request) -> TokenRow:
    return await authenticate(request, "api")


async def job_token(request: Request) -> TokenRow:
    row = await authenticate(request, "job")
    job_id = request.path_params.get("job_id")
    if job_id is not None and row.job_id != job_id:
        raise HTTPException(401, "this job token belongs to another job")
    return row
