"""Tokens are stored as SHA-256 hashes; the plain value exists only in the caller's hands."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import bindparam, select, update

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

# Hot statements, built once: building a statement anew on every call costs about as much as
# running it on SQLite. (Bound names in an UPDATE must differ from column names.)
_INSERT = t.tokens.insert()
_BY_HASH = select(
    t.tokens.c.id,
    t.tokens.c.kind,
    t.tokens.c.agent_id,
    t.tokens.c.job_id,
    t.tokens.c.revoked_at,
).where(t.tokens.c.token_hash == bindparam("token_hash"))
_REVOKE_JOB = (
    update(t.tokens)
    .where(t.tokens.c.job_id == bindparam("of_job"), t.tokens.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"))
)
_REVOKE_AGENT = (
    update(t.tokens)
    .where(t.tokens.c.agent_id == bindparam("of_agent"), t.tokens.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"))
)


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
        await self._insert_token(kind, token, agent_id, job_id, description)
        return token

    async def add_token(self, kind: str, token: str, *, description: str = "") -> None:
        """Store a token whose value was chosen elsewhere (e.g. kept in the data dir)."""
        await self._insert_token(kind, token, None, None, description)

    async def _insert_token(
        self, kind: str, token: str, agent_id: str | None, job_id: str | None, description: str
    ) -> None:
        row = TokenRow(id=new_id(), kind=kind, agent_id=agent_id, job_id=job_id)
        digest = hash_token(token)
        await self.conn.execute(
            _INSERT,
            {
                "id": row.id,
                "kind": kind,
                "token_hash": digest,
                "agent_id": agent_id,
                "job_id": job_id,
                "description": description,
                "created_at": utcnow(),
            },
        )
        self.changes.tokens_created.append((digest, row))

    async def count_tokens(self, kind: str) -> int:
        rows = await self.conn.execute(
            select(t.tokens.c.id).where(t.tokens.c.kind == kind, t.tokens.c.revoked_at.is_(None))
        )
        return len(rows.all())

    async def token_by_hash(self, digest: str) -> TokenRow:
        """The live token with this SHA-256 hash, whatever its kind. AuthError if there is none
        or it was revoked."""
        row = (await self.conn.execute(_BY_HASH, {"token_hash": digest})).first()
        if row is None:
            raise AuthError("unknown token")
        if row.revoked_at is not None:
            raise AuthError("token revoked")
        return TokenRow(id=row.id, kind=row.kind, agent_id=row.agent_id, job_id=row.job_id)

    async def authenticate(self, token: str, *kinds: str) -> TokenRow:
        row = await self.token_by_hash(hash_token(token))
        if row.kind not in kinds:
            raise AuthError("unknown token")
        return row

    async def revoke_job_tokens(self, job_id: str) -> None:
        await self.conn.execute(_REVOKE_JOB, {"of_job": job_id, "now": utcnow()})
        self.changes.revoked_job_tokens.add(job_id)

    async def revoke_agent_tokens(self, agent_id: str) -> None:
        await self.conn.execute(_REVOKE_AGENT, {"of_agent": agent_id, "now": utcnow()})
        self.changes.revoked_agent_tokens.add(agent_id)
