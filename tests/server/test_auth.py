"""Authentication: each API takes only its own kind of token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import event

from conveyor import protocol as p
from conveyor.client import AgentClient
from conveyor.errors import APIError, JobGoneError
from conveyor.server.service import ServerHandle
from tests.harness import Api
from tests.server.drive import finish, new_agent, take_job

pytestmark = pytest.mark.anyio


async def test_registration(server: ServerHandle, http: httpx.AsyncClient, api: Api) -> None:
    assert server.api_token is not None and server.registration_token is not None
    for wrong in ["cvr_not-the-token", server.api_token]:
        with pytest.raises(APIError) as caught:
            await AgentClient(http, wrong).register(p.RegisterRequest(name="intruder"))
        assert caught.value.status == 401
    r = await http.post("/agent/v1/register", json={"name": "no header"})
    assert r.status_code == 401
    assert "Authorization" in r.json()["message"]
    assert (await api.http.get("/api/v1/agents", params={"all": True})).json() == []

    reg = await AgentClient(http, server.registration_token).register(
        p.RegisterRequest(name="builder-1", hostname="box", tags={"queue": "linux"}, priority=3)
    )
    assert reg.name == "builder-1"
    assert reg.access_token.startswith(p.AGENT_TOKEN_PREFIX)
    assert reg.ping_interval == 1  # the harness's setting
    agent = AgentClient(http, reg.access_token)
    await agent.connect()
    beat = await agent.heartbeat()
    assert beat.received_at >= beat.sent_at
    agents = (await api.http.get("/api/v1/agents")).json()
    assert [(a["id"], a["name"], a["state"], a["tags"], a["priority"]) for a in agents] == [
        (reg.id, "builder-1", "connected", {"queue": "linux"}, 3)
    ]
    assert agents[0]["last_heartbeat_at"] is not None


async def test_each_api_takes_only_its_own_tokens(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    assert server.api_token is not None and server.registration_token is not None
    # Not an agent token: the API token, the registration token, a made-up one.
    for token in [server.api_token, server.registration_token, "cva_made-up"]:
        wrong = AgentClient(http, token)
        for call in [wrong.connect, wrong.ping, wrong.heartbeat]:
            with pytest.raises(APIError) as caught:
                await call()
            assert caught.value.status == 401, (token[:4], call)

    # Not an API token: an agent's, a job's, the registration token.
    build = await api.create_build("steps:\n  - command: echo hi\n")
    registration = AgentClient(http, server.registration_token)
    reg = await registration.register(p.RegisterRequest(name="a1"))
    agent = registration.with_token(reg.access_token)
    await agent.connect()
    ping = await agent.ping()
    assert ping.job is not None
    spec = await agent.accept(ping.job.id)
    for token in [reg.access_token, spec.token, server.registration_token]:
        headers = {"Authorization": f"Token {token}"}
        for path in [
            "/api/v1/builds",
            f"/api/v1/pipelines/test/builds/{build.number}",
            f"/api/v1/jobs/{spec.id}/log",
        ]:
            r = await http.get(path, headers=headers)
            assert r.status_code == 401, (token[:4], path)
        r = await http.post(
            "/api/v1/pipelines/test/builds", json={"pipeline": "steps: []"}, headers=headers
        )
        assert r.status_code == 401
    assert len((await api.http.get("/api/v1/builds")).json()) == 1

    # The header: `Token` or `Bearer`, any case.
    for header, status in [
        (f"Token {server.api_token}", 200),
        (f"Bearer {server.api_token}", 200),
        (f"token   {server.api_token}", 200),
        (server.api_token, 401),
        (f"Basic {server.api_token}", 401),
        ("Token", 401),
    ]:
        r = await http.get("/api/v1/builds", headers={"Authorization": header})
        assert r.status_code == status, header
    r = await http.get("/api/v1/builds")
    assert r.status_code == 401
    assert r.json() == {"message": "missing Authorization: Token <token> header"}


async def test_a_token_seen_lately_is_taken_without_reading_it_again(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    """Known tokens come from the server's cache (no transaction per request); a token
    revoked through this server is refused at once all the same."""
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = server.ctx.store.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        await api.create_build("steps:\n  - command: echo hi\n")
        agent = await new_agent(http, server, "cached")
        _, job = await take_job(agent)
        await job.start()
        statements.clear()
        await agent.heartbeat()
        await job.upload_chunk(1, 0, b"hi\n")
        assert (await job.state()).state == p.JobState.RUNNING
        assert not [s for s in statements if "FROM tokens" in s], statements
        await finish(job)
        # The job's token went with the finish: refused at once, though it was cached.
        with pytest.raises(JobGoneError):
            await job.state()
        # The agent's own token still works.
        await agent.heartbeat()
    finally:
        event.remove(engine, "before_cursor_execute", note)
