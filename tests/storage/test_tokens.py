"""Tokens: stored as SHA-256 hashes only, authenticated by kind, revocable."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from conveyor.errors import AuthError
from conveyor.storage import Store
from conveyor.storage import tables as t
from tests.storage.builders import command_step, insert_agent, insert_build

pytestmark = pytest.mark.anyio


async def test_tokens_are_stored_hashed(store: Store) -> None:
    async with store.transaction() as tx:
        agent_id = await insert_agent(tx, "a1")
        build_id = await insert_build(tx, "p", [command_step("one")])
        job_id = (await tx.get_build(build_id)).jobs[0].id
        plain = {
            "registration": await tx.create_token("registration"),
            "api": await tx.create_token("api", description="ops"),
            "agent": await tx.create_token("agent", agent_id=agent_id),
            "job": await tx.create_token("job", job_id=job_id),
        }
        await tx.add_token("api", "cvt_chosen-elsewhere")
        plain["chosen"] = "cvt_chosen-elsewhere"
    async with store.db.engine.connect() as conn:
        rows = (await conn.execute(select(t.tokens))).all()

    assert {k: v[:4] for k, v in plain.items() if k != "chosen"} == {
        "registration": "cvr_",
        "api": "cvt_",
        "agent": "cva_",
        "job": "cvj_",
    }
    assert len(rows) == 5
    stored = " ".join(repr(tuple(row)) for row in rows)
    for value in plain.values():
        assert value not in stored
        assert value.removeprefix("cvt_").removeprefix("cvr_") not in stored
    assert {row.token_hash for row in rows} == {
        hashlib.sha256(v.encode()).hexdigest() for v in plain.values()
    }


async def test_authenticate_by_kind(store: Store) -> None:
    async with store.transaction() as tx:
        agent_id = await insert_agent(tx, "a1")
        agent_token = await tx.create_token("agent", agent_id=agent_id)
        api_token = await tx.create_token("api")
    async with store.transaction() as tx:
        row = await tx.authenticate(agent_token, "agent")
        assert (row.kind, row.agent_id, row.job_id) == ("agent", agent_id, None)
        # Any of several kinds may be accepted.
        assert (await tx.authenticate(api_token, "agent", "api")).kind == "api"
        with pytest.raises(AuthError, match="unknown token"):
            await tx.authenticate(agent_token, "api")
        with pytest.raises(AuthError, match="unknown token"):
            await tx.authenticate(api_token, "registration", "job")
        with pytest.raises(AuthError, match="unknown token"):
            await tx.authenticate("cva_never-issued", "agent")
        with pytest.raises(AuthError):
            await tx.authenticate("", "agent")


async def test_revoked_tokens_are_refused(store: Store) -> None:
    async with store.transaction() as tx:
        agent_id = await insert_agent(tx, "a1")
        other_agent = await insert_agent(tx, "a2")
        build_id = await insert_build(tx, "p", [command_step("one"), command_step("two")])
        job_a, job_b = [j.id for j in (await tx.get_build(build_id)).jobs]
        agent_token = await tx.create_token("agent", agent_id=agent_id)
        other_token = await tx.create_token("agent", agent_id=other_agent)
        token_a = await tx.create_token("job", job_id=job_a)
        token_b = await tx.create_token("job", job_id=job_b)

    async with store.transaction() as tx:
        await tx.revoke_job_tokens(job_a)
        await tx.revoke_agent_tokens(agent_id)
    async with store.transaction() as tx:
        with pytest.raises(AuthError, match="revoked"):
            await tx.authenticate(token_a, "job")
        with pytest.raises(AuthError, match="revoked"):
            await tx.authenticate(agent_token, "agent")
        # Revoking is scoped: the other job's and the other agent's tokens still work.
        assert (await tx.authenticate(token_b, "job")).job_id == job_b
        assert (await tx.authenticate(other_token, "agent")).agent_id == other_agent
        # Counting (how the server knows whether to make its first tokens) skips revoked ones.
        assert await tx.count_tokens("agent") == 1
        assert await tx.count_tokens("job") == 1
        assert await tx.count_tokens("api") == 0
        await tx.create_token("api")
        assert await tx.count_tokens("api") == 1
