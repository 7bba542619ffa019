"""Tokens are stored as SHA-256 hashes; the plain value exists only in the caller's hands."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update

from conveyor import protocol as p
from conveyor.errors import AuthError
from conveyor.storage import tables as t
from conveyor.storage.queries.base import QueryBase, new_id, utcnow
from conveyor.storage.rows import TokenRow

PREFIXES = {
    "registration": p.REGISTRATION_TOKEN_PREFIX,
    "agent": p.AGENT_TOKEN_PREFIX,
    "job": p.JOB_TOKEN_PREFIX,
    "api": p.API_TOKEN_PREFIX,
}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenQueries(QueryBase):
    async def create_token(
        self,
        kind: str,
        *,
        agent_id: str | None = None,
        job_id: str | None = None,
        description: str = "",
    ) -> str:
        token = PREFIXES[kind] + secrets.token_urlsafe(32)
        await self.conn.execute(
            t.tokens.insert().values(
                id=new_id(),
                kind=kind,
                token_hash=hash_token(token),
                agent_id=agent_id,
                job_id=job_id,
                description=description,
                created_at=utcnow(),
            )
        )
        return token

    async def add_token(self, kind: str, token: str, *, description: str = "") -> None:
        """Store a token whose value was chosen elsewhere (e.g. kept in the data dir)."""
        await self.conn.execute(
            t.tokens.insert().values(
                id=new_id(),
                kind=kind,
                token_hash=hash_token(token),
                description=description,
                created_at=utcnow(),
            )
        )

    async def count_tokens(self, kind: str) -> int:
        rows = await self.conn.execute(
            select(t.tokens.c.id).where(t.tokens.c.kind == kind, t.tokens.c.revoked_at.is_(None))
        )
        return len(rows.all())

    async def authenticate(self, token: str, *kinds: str) -> TokenRow:
        row = (
            await self.conn.execute(
                select(t.tokens).where(t.tokens.c.token_hash == hash_token(token))
            )
        ).first()
        if row is None or row.kind not in kinds:
            raise AuthError("unknown token")
        if row.revoked_at is not None:
            raise AuthError("token revoked")
        return TokenRow(id=row.id, kind=row.kind, agent_id=row.agent_id, job_id=row.job_id)

    async def revoke_job_tokens(self, job_id: str) -> None:
        await self.conn.execute(
            update(t.tokens)
            .where(t.tokens.c.job_id == job_id, t.tokens.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )

    async def revoke_agent_tokens(self, agent_id: str) -> None:
        await self.conn.execute(
            update(t.tokens)
            .where(t.tokens.c.agent_id == agent_id, t.tokens.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
