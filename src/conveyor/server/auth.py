"""Request authentication: `Authorization: Token <t>` (or `Bearer <t>`), checked in the store.

A token seen (or created) lately is taken from the server's token cache without a transaction
(see `server.tokencache` for how revocations reach it)."""

from __future__ import annotations

from fastapi import HTTPException, Request

from conveyor.errors import AuthError
from conveyor.server.context import ServerContext
from conveyor.storage.queries.tokens import hash_token
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
    digest = hash_token(_token(request))
    ctx = context(request)
    row = ctx.tokens.get(digest)
    problem = "unknown token"
    if row is None:
        generation = ctx.tokens.generation
        try:
            async with ctx.store.transaction() as tx:
                row = await tx.token_by_hash(digest)
        except AuthError as exc:
            problem = str(exc)
        else:
            ctx.tokens.put(digest, row, generation=generation)
    if row is None or row.kind not in kinds:
        raise HTTPException(401, f"{problem}: expected a {' or '.join(kinds)} token")
    return row


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
