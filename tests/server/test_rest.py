"""The REST API: validation, not-found answers, the OpenAPI document, long polling."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from conveyor import protocol as p
from conveyor.server.service import ServerHandle
from tests.harness import Api, running_server
from tests.server.drive import new_agent, take_job

pytestmark = pytest.mark.anyio

ONE_STEP = "steps:\n  - command: echo hi\n"


async def test_request_validation_and_not_found(api: Api) -> None:
    r = await api.http.post(
        "/api/v1/pipelines/test/builds", json={"pipeline": ONE_STEP, "bogus_field": 1}
    )
    assert r.status_code == 422
    assert "bogus_field" in r.json()["message"]
    r = await api.http.post("/api/v1/pipelines/test/builds", json={"branch": "main"})
    assert r.status_code == 422
    assert "pipeline" in r.json()["message"]
    r = await api.http.post(
        "/api/v1/pipelines/test/builds", json={"pipeline": ONE_STEP, "env": {"A": ["list"]}}
    )
    assert r.status_code == 422
    assert "env.A" in r.json()["message"]
    r = await api.http.post("/api/v1/pipelines/test/builds", json={"pipeline": ""})
    assert r.status_code == 422
    r = await api.http.post(
        "/api/v1/pipelines/test/builds", content=b"{not json", headers={"Content-Type": "x"}
    )
    assert r.status_code == 422
    r = await api.http.post("/api/v1/pipelines/bad%20slug!/builds", json={"pipeline": ONE_STEP})
    assert r.status_code == 422
    assert "slug" in r.json()["message"]
    for limit in ["0", "501", "many"]:
        r = await api.http.get("/api/v1/builds", params={"limit": limit})
        assert r.status_code == 422, limit
    r = await api.http.get("/api/v1/pipelines/test/builds/1", params={"wait": 61})
    assert r.status_code == 422
    assert (await api.http.get("/api/v1/builds")).json() == []

    # Unknown things are 404 with a message.
    build = await api.create_build(ONE_STEP, slug="known")
    for path in [
        "/api/v1/pipelines/known/builds/2",
        "/api/v1/pipelines/unknown/builds/1",
        "/api/v1/jobs/no-such-job",
        "/api/v1/jobs/no-such-job/log",
    ]:
        r = await api.http.get(path)
        assert r.status_code == 404, path
        assert r.json()["message"], path
    r = await api.http.get("/api/v1/pipelines/known/builds/2")
    assert r.json() == {"message": "no build known#2"}
    assert (await api.http.get(f"/api/v1/pipelines/known/builds/{build.number}")).is_success
    assert (await api.http.get("/api/v1/pipelines/known/builds/x")).status_code == 422


async def test_builds_are_listed_newest_first(api: Api) -> None:
    for slug in ["a", "b", "a"]:
        await api.create_build(ONE_STEP, slug=slug)
    listed = [p.BuildOut.model_validate(b) for b in (await api.http.get("/api/v1/builds")).json()]
    assert [(b.pipeline, b.number) for b in listed] == [("a", 2), ("b", 1), ("a", 1)]
    only_a = (await api.http.get("/api/v1/builds", params={"pipeline": "a", "limit": 1})).json()
    assert [(b["pipeline"], b["number"]) for b in only_a] == [("a", 2)]
    created = await api.create_build(ONE_STEP, slug="b", branch="dev", message="m")
    assert (created.branch, created.commit, created.message) == ("dev", "HEAD", "m")
    assert created.warnings == []
    warned = await api.create_build("steps:\n  - command: x\n    flavour: mint\n")
    assert len(warned.warnings) == 1 and "flavour" in warned.warnings[0]


async def test_openapi_document_lists_both_apis(tmp_path: Path) -> None:
    """The document does not depend on the database: one backend is enough."""
    async with (
        running_server(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "srv") as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        r = await http.get("/openapi.json")
        assert (await http.get("/healthz")).json()["status"] == "ok"
    assert r.status_code == 200
    doc = r.json()
    paths = doc["paths"]
    for path in [
        "/agent/v1/register",
        "/agent/v1/ping",
        "/agent/v1/jobs/{job_id}/accept",
        "/agent/v1/jobs/{job_id}/chunks",
        "/agent/v1/jobs/{job_id}/finish",
        "/api/v1/pipelines/{slug}/builds",
        "/api/v1/pipelines/{slug}/builds/{number}",
        "/api/v1/jobs/{job_id}/log",
    ]:
        assert path in paths, path
    assert "post" in paths["/agent/v1/register"]
    assert "post" in paths["/api/v1/pipelines/{slug}/builds"]
    # The wire models of protocol.py are the schema.
    schemas = doc["components"]["schemas"]
    for model in ["RegisterRequest", "JobSpec", "ChunkAck", "FinishRequest", "BuildOut"]:
        assert model in schemas, model
    assert "stored" in schemas["ChunkAck"]["properties"]


async def test_long_poll(server: ServerHandle, http: httpx.AsyncClient, api: Api) -> None:
    build = await api.create_build(ONE_STEP)
    path = f"/api/v1/pipelines/test/builds/{build.number}"

    # Nothing changes: answered after about `wait`, with the same version.
    start = time.monotonic()
    r = await api.http.get(path, params={"wait": 1, "after": build.version})
    elapsed = time.monotonic() - start
    assert r.status_code == 200
    assert 0.8 < elapsed < 10
    assert p.BuildOut.model_validate(r.json()).version == build.version
    # A stale version, or no version at all, is answered at once.
    start = time.monotonic()
    r = await api.http.get(path, params={"wait": 30, "after": "stale"})
    assert p.BuildOut.model_validate(r.json()).version == build.version
    assert (await api.http.get(path, params={"wait": 30})).status_code == 200
    assert time.monotonic() - start < 10

    # A change while waiting: answered promptly with the new version.
    _, job = await take_job(await new_agent(http, server, "a1"))
    current = p.BuildOut.model_validate((await api.http.get(path)).json())
    answered: list[tuple[float, p.BuildOut]] = []

    async def poll() -> None:
        start = time.monotonic()
        r = await api.http.get(path, params={"wait": 5, "after": current.version})
        answered.append((time.monotonic() - start, p.BuildOut.model_validate(r.json())))

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.sleep(0.5)
        assert answered == []  # still waiting: nothing changed yet
        await job.start()
    [(elapsed, changed)] = answered
    assert elapsed < 4
    assert changed.version != current.version
    assert changed.state == p.BuildState.RUNNING
    assert changed.jobs[0].state == p.JobState.RUNNING
