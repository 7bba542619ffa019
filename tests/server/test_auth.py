"""Authentication: each API takes only its own kind of token."""

from __future__ import annotations

import httpx
import pytest

from conveyor import protocol as p
from conveyor.client import AgentClient
from conveyor.errors import APIError
from conveyor.server.service import ServerHandle
from tests.harness import Api

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
