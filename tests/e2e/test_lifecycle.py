"""The agent process's lifecycle: hooks, idle and uptime limits, --acquire-job, health server."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import anyio
import httpx
import pytest

from conveyor import protocol as p
from conveyor.agent import AgentPool, WorkerOptions
from conveyor.agent.health import HealthServer
from conveyor.agent.pool import Lifecycle
from conveyor.errors import ConveyorError
from conveyor.server.service import ServerHandle
from tests.harness import Api, running_server

pytestmark = pytest.mark.anyio


async def hook(path: Path, body: str) -> Path:
    await anyio.Path(path).write_text("#!/bin/sh\n" + body + "\n")
    await anyio.Path(path).chmod(stat.S_IRWXU)
    return path


def pool_for(server: ServerHandle, tmp_path: Path, *, spawn: int = 1, **kw: object) -> AgentPool:
    assert server.registration_token is not None
    options = {k: kw.pop(k) for k in ("acquire_job", "disconnect_after_job") if k in kw}
    return AgentPool(
        WorkerOptions(
            endpoint=server.url,
            registration_token=server.registration_token,
            build_path=tmp_path / "builds",
            **options,  # type: ignore[arg-type]
        ),
        spawn=spawn,
        lifecycle=Lifecycle(**kw),  # type: ignore[arg-type]
    )


async def test_hooks_and_idle_timeout(database_url: str, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    await anyio.Path(hooks).mkdir()
    out = tmp_path / "out"
    await hook(hooks / "agent-startup", f'echo "startup $CONVEYOR_AGENT_NAMES" >> {out}')
    await hook(
        hooks / "agent-shutdown", f'echo "shutdown $CONVEYOR_AGENT_SHUTDOWN_REASON" >> {out}'
    )
    shutdown = await hook(tmp_path / "on-stop", f'echo "hook $1" >> {out}')
    async with running_server(database_url, tmp_path / "srv") as server, Api(server) as api:
        pool = pool_for(
            server, tmp_path, spawn=2, hooks_path=hooks, shutdown_hook=shutdown,
            disconnect_after_idle_timeout=1.5,
        )  # fmt: skip
        build = await api.create_build("steps:\n  - command: sleep 2; echo done\n")
        with anyio.fail_after(30):
            await pool.run()  # ends by itself: idle, but not while the job runs
        done = await api.wait_build(build)
    assert done.state == p.BuildState.PASSED
    assert pool.shutdown_reason == "idle"
    lines = (await anyio.Path(out).read_text()).splitlines()
    names = ",".join(w.name for w in pool.workers)
    assert lines == [f"startup {names}", "shutdown idle", "hook idle"]
    # Idle means every worker: it stopped only after the job ended.
    finished = done.jobs[0].finished_at
    assert finished is not None


async def test_uptime_lets_the_running_job_finish(database_url: str, tmp_path: Path) -> None:
    async with running_server(database_url, tmp_path / "srv") as server, Api(server) as api:
        pool = pool_for(server, tmp_path, disconnect_after_uptime=1)
        build = await api.create_build("steps:\n  - command: sleep 2; echo finished\n")
        with anyio.fail_after(30):
            await pool.run()
        done = await api.wait_build(build)
    assert pool.shutdown_reason == "uptime"
    assert done.jobs[0].exit_status == 0


async def test_acquire_job_runs_that_job_once_it_is_runnable(
    database_url: str, tmp_path: Path
) -> None:
    async with running_server(database_url, tmp_path / "srv") as server, Api(server) as api:
        build = await api.create_build(
            "steps:\n  - label: first\n    command: echo 1\n  - wait\n"
            "  - label: second\n    command: echo 2\n  - label: third\n    command: echo 3\n"
        )
        second = next(j for j in build.jobs if j.label == "second")
        acquirer = pool_for(server, tmp_path, acquire_job=second.id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(acquirer.run)  # waits (423, retried) until `second` is runnable
            helper = pool_for(server, tmp_path, acquire_job=build.jobs[0].id)
            await helper.run()
        r = await api.http.get(f"/api/v1/pipelines/test/builds/{build.number}")
    states = {j["label"]: (j["state"], j["agent_id"]) for j in r.json()["jobs"]}
    assert states["first"][0] == "finished" and states["second"][0] == "finished"
    assert states["second"][1] == acquirer.workers[0].agent_id
    assert states["third"] == ("scheduled", None)  # the acquirer took nothing else
    assert acquirer.shutdown_reason == "job-finished"


async def test_acquiring_a_finished_job_is_an_error(database_url: str, tmp_path: Path) -> None:
    async with running_server(database_url, tmp_path / "srv") as server, Api(server) as api:
        build = await api.create_build("steps:\n  - command: echo\n")
        await pool_for(server, tmp_path, acquire_job=build.jobs[0].id).run()
        again = pool_for(server, tmp_path, acquire_job=build.jobs[0].id)
        await again.run()
    assert again.failures and "cannot be acquired" in again.failures[0]


async def test_failing_startup_hook_stops_the_agent(database_url: str, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    await anyio.Path(hooks).mkdir()
    await hook(hooks / "agent-startup", "exit 3")
    async with running_server(database_url, tmp_path / "srv") as server:
        pool = pool_for(server, tmp_path, hooks_path=hooks)
        with pytest.RaisesGroup(
            pytest.RaisesExc(ConveyorError, match="agent-startup hook"), flatten_subgroups=True
        ):
            await pool.run()


async def test_health_server(database_url: str, tmp_path: Path) -> None:
    async with running_server(database_url, tmp_path / "srv") as server, Api(server) as api:
        pool = pool_for(server, tmp_path, spawn=2)
        async with anyio.create_task_group() as tg, httpx.AsyncClient() as http:
            port = await tg.start(HealthServer(pool, "127.0.0.1:0").run)
            await tg.start(pool.run)
            build = await api.create_build("steps:\n  - command: echo hi\n")
            await api.wait_build(build)
            base = f"http://127.0.0.1:{port}"
            health = await http.get(base + "/healthz")
            assert (health.status_code, health.text) == (200, "ok\n")
            status = (await http.get(base + "/status.json")).json()
            assert set(status["workers"]) == {w.name for w in pool.workers}
            for lines in status["workers"].values():
                assert {"state", "ping", "stream", "heartbeat"} <= set(lines)
                assert lines["stream"].startswith("connected")
            metrics = (await http.get(base + "/metrics")).text
            assert "conveyor_agent_jobs_total 1" in metrics
            assert 'conveyor_agent_workers{state="idle"} 2' in metrics
            assert (await http.get(base + "/nope")).status_code == 404
            pool.stop()
            tg.cancel_scope.cancel()
    assert json.dumps(status)
