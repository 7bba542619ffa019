"""Races and retries on the agent API, driven step by step with the real agent client."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from conveyor import protocol as p
from conveyor.client import AgentClient, JobClient, new_http_client
from conveyor.errors import JobGoneError
from conveyor.server.service import ServerHandle
from tests.harness import Api, running_server

pytestmark = pytest.mark.anyio


async def new_agent(http: httpx.AsyncClient, server: ServerHandle, name: str) -> AgentClient:
    assert server.registration_token is not None
    registration = AgentClient(http, server.registration_token)
    registered = await registration.register(p.RegisterRequest(name=name))
    agent = registration.with_token(registered.access_token)
    await agent.connect()
    return agent


async def take(agent: AgentClient) -> JobClient:
    ping = await agent.ping()
    assert ping.job is not None
    job = agent.job_client(await agent.accept(ping.job.id))
    await job.start()
    return job


def finish_body(status: int = 0) -> p.FinishRequest:
    from datetime import UTC, datetime

    return p.FinishRequest(exit_status=status, finished_at=datetime.now(UTC))


async def test_parallel_jobs_finishing_together_settle_the_build(
    database_url: str, tmp_path: Path
) -> None:
    """Two jobs before a wait finish at the same moment: the step after the wait must run."""
    pipeline = "steps:\n  - command: a\n  - command: b\n  - wait\n  - label: c\n    command: c\n"
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        agents = [await new_agent(http, server, f"agent-{i}") for i in range(2)]
        for _ in range(8):
            build = await api.create_build(pipeline)
            first, second = [await take(agent) for agent in agents]
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.finish, finish_body())
                tg.start_soon(second.finish, finish_body())
            r = await api.http.get(f"/api/v1/pipelines/test/builds/{build.number}")
            states = {j["label"]: j["state"] for j in r.json()["jobs"]}
            assert states["c"] == "scheduled", states
            third = await take(agents[0])
            await third.finish(finish_body())


async def test_accept_and_start_are_idempotent(database_url: str, tmp_path: Path) -> None:
    """A retry after a lost answer gets the job again instead of stranding it."""
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        build = await api.create_build("steps:\n  - command: echo hi\n")
        agent = await new_agent(http, server, "retrier")
        ping = await agent.ping()
        assert ping.job is not None
        first = await agent.accept(ping.job.id)
        again = await agent.accept(ping.job.id)  # as if the first answer was lost
        assert again.id == first.id and again.token != first.token
        # Only the token that reached the agent works.
        with pytest.raises(JobGoneError):
            await agent.job_client(first).state()
        job = agent.job_client(again)
        await job.start()
        await job.start()  # a retried start is fine too
        assert (await job.state()).state == p.JobState.RUNNING
        await job.upload_chunk(1, 0, b"hi\r\n")
        await job.finish(finish_body())
        done = await api.wait_build(build)
        assert done.state == p.BuildState.PASSED
        assert await api.log(done.jobs[0].id) == b"hi\r\n"


async def test_disconnect_finishes_the_jobs_an_agent_holds(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        build = await api.create_build("steps:\n  - command: one\n  - command: two\n")
        leaving = await new_agent(http, server, "leaving")
        running = await take(leaving)
        held = await leaving.ping()  # assigned, never accepted
        assert held.job is not None
        await leaving.disconnect()
        with pytest.raises(JobGoneError):
            await running.state()
        r = await api.http.get(f"/api/v1/pipelines/test/builds/{build.number}")
        jobs = {j["id"]: j for j in r.json()["jobs"]}
        assert jobs[running.job_id]["state"] == "finished"
        assert jobs[running.job_id]["exit_status"] == -1
        assert jobs[running.job_id]["signal_reason"] == "agent_stop"
        # The job it never accepted goes to another agent.
        assert jobs[held.job.id]["state"] == "scheduled"
        other = await new_agent(http, server, "other")
        ping = await other.ping()
        assert ping.job is not None and ping.job.id == held.job.id


async def test_build_cancel(database_url: str, tmp_path: Path) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        build = await api.create_build(
            "steps:\n  - label: r\n    command: r\n  - wait\n  - label: later\n    command: l\n"
        )
        agent = await new_agent(http, server, "a")
        job = await take(agent)
        r = await api.http.post(f"/api/v1/pipelines/test/builds/{build.number}/cancel")
        assert r.status_code == 200
        assert r.json()["state"] == "canceling"
        states = {j["label"]: j["state"] for j in r.json()["jobs"]}
        assert states == {"r": "canceling", "later": "canceled"}
        assert (await job.state()).state == p.JobState.CANCELING
        await job.finish(p.FinishRequest(exit_status=-1, signal_reason=p.SignalReason.CANCEL,
                                         finished_at=finish_body().finished_at))  # fmt: skip
        done = await api.wait_build(build)
        assert done.state == p.BuildState.CANCELED
        assert [j.state for j in done.jobs] == [p.JobState.CANCELED, p.JobState.CANCELED]
