"""Operating agents from the server: pause, resume, stop, and live changes of tags and spawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from conveyor import protocol as p
from conveyor.agent import AgentPool, WorkerOptions
from conveyor.server.service import ServerHandle
from tests.harness import Api, running_server

pytestmark = pytest.mark.anyio


def pool_for(server: ServerHandle, tmp_path: Path, *, spawn: int = 1, **opts: Any) -> AgentPool:
    assert server.registration_token is not None
    return AgentPool(
        WorkerOptions(
            endpoint=server.url,
            registration_token=server.registration_token,
            build_path=tmp_path / "builds",
            **opts,
        ),
        spawn=spawn,
    )


async def agents(api: Api) -> list[dict[str, Any]]:
    r = await api.http.get("/api/v1/agents")
    assert r.status_code == 200
    result: list[dict[str, Any]] = r.json()
    return result


async def until(api: Api, check: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """Observe the server until `check(agents)` holds (bounded)."""
    with anyio.fail_after(timeout):
        while not check(found := await agents(api)):
            await anyio.sleep(0.1)
    return found


@pytest.mark.parametrize("mode", ["auto", "ping-only"])
async def test_pause_and_resume(database_url: str, tmp_path: Path, mode: str) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        anyio.create_task_group() as tg,
    ):
        pool = pool_for(server, tmp_path, ping_mode=mode, ping_interval=2)
        await tg.start(pool.run)
        (agent,) = await agents(api)
        r = await api.http.post(f"/api/v1/agents/{agent['id']}/pause")
        assert r.status_code == 200 and r.json()["paused"] is True
        build = await api.create_build("steps:\n  - command: echo ran\n")
        with anyio.move_on_after(3):
            build = await api.wait_build(build, timeout=3)
        assert build.jobs[0].state == p.JobState.SCHEDULED  # paused: nothing taken
        r = await api.http.post(f"/api/v1/agents/{agent['id']}/resume")
        assert r.json()["paused"] is False
        done = await api.wait_build(build)
        assert done.state == p.BuildState.PASSED
        pool.stop()


@pytest.mark.parametrize("force", [False, True])
async def test_stop(database_url: str, tmp_path: Path, force: bool) -> None:
    marker = tmp_path / "started"
    async with running_server(database_url, tmp_path / "srv") as server, Api(server) as api:
        pool = pool_for(server, tmp_path)
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            (agent,) = await agents(api)
            build = await api.create_build(
                f"steps:\n  - command: touch {marker}; sleep 2; echo done\n"
            )
            with anyio.fail_after(30):
                while not await anyio.Path(marker).exists():
                    await anyio.sleep(0.05)
            r = await api.http.post(f"/api/v1/agents/{agent['id']}/stop", json={"force": force})
            assert r.status_code == 200
        # pool.run returned: the agent disconnected by itself.
        done = await api.wait_build(build)
        job = done.jobs[0]
        if force:
            assert (job.state, job.exit_status, job.signal_reason) == (
                p.JobState.CANCELED, -1, "cancel",
            )  # fmt: skip
        else:
            assert (job.state, job.exit_status) == (p.JobState.FINISHED, 0)
        assert await agents(api) == []


async def test_live_spawn_and_tags(database_url: str, tmp_path: Path) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        anyio.create_task_group() as tg,
    ):
        pool = pool_for(server, tmp_path, spawn=1)
        await tg.start(pool.run)
        (first,) = await agents(api)
        r = await api.http.put(f"/api/v1/agents/{first['id']}", json={"spawn": 3})
        assert r.status_code == 200
        grown = await until(api, lambda found: len(found) == 3)
        assert {a["process_id"] for a in grown} == {pool.process_id}

        # Shrinking lets running jobs finish: three long jobs, then spawn 1.
        build = await api.create_build(
            "steps:\n" + "".join(f"  - command: sleep 1.5; echo {i}\n" for i in range(3))
        )
        await until(api, lambda found: sum(a["current_job_id"] is not None for a in found) == 3)
        await api.http.put(f"/api/v1/agents/{first['id']}", json={"spawn": 1})
        done = await api.wait_build(build)
        assert [j.exit_status for j in done.jobs] == [0, 0, 0]
        await until(api, lambda found: len(found) == 1)

        # New tags route new jobs.
        (left,) = await agents(api)
        gpu_build = await api.create_build("steps:\n  - agents: {queue: gpu}\n    command: echo\n")
        r = await api.http.put(f"/api/v1/agents/{left['id']}", json={"tags": {"queue": "gpu"}})
        assert r.json()["tags"] == {"queue": "gpu"}
        assert (await api.wait_build(gpu_build)).state == p.BuildState.PASSED
        pool.stop()


async def test_orders_for_unknown_or_gone_agents(database_url: str, tmp_path: Path) -> None:
    async with running_server(database_url, tmp_path / "srv") as server, Api(server) as api:
        r = await api.http.post("/api/v1/agents/nope/pause")
        assert r.status_code == 404
        pool = pool_for(server, tmp_path)
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            (agent,) = await agents(api)
            pool.stop()
        r = await api.http.post(f"/api/v1/agents/{agent['id']}/resume")
        assert r.status_code == 409 and "disconnected" in r.json()["message"]
