"""Dispatch through the agent API: who gets which job, and what happens to unaccepted jobs."""

from __future__ import annotations

import httpx
import pytest

from conveyor import protocol as p
from conveyor.errors import APIError
from conveyor.server.service import ServerHandle
from tests.harness import Api
from tests.server.drive import finish, new_agent, run_job, take_job

pytestmark = pytest.mark.anyio


async def _job_state(api: Api, job_id: str) -> tuple[p.JobState, str | None]:
    job = p.JobOut.model_validate((await api.http.get(f"/api/v1/jobs/{job_id}")).json())
    return job.state, job.agent_id


async def test_accept_of_a_job_assigned_to_another_agent_conflicts(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    build = await api.create_build("steps:\n  - command: one\n")
    owner = await new_agent(http, server, "owner")
    thief = await new_agent(http, server, "thief")
    ping = await owner.ping()
    assert ping.job is not None and ping.job.id == build.jobs[0].id
    with pytest.raises(APIError) as caught:
        await thief.accept(ping.job.id)
    assert caught.value.status == 409
    assert "not assigned to you" in str(caught.value)
    state, agent_id = await _job_state(api, ping.job.id)
    assert state == p.JobState.ASSIGNED
    # The owner still can.
    spec = await owner.accept(ping.job.id)
    assert spec.id == ping.job.id
    # A scheduled job nobody was given cannot be accepted either.
    waiting = (await api.create_build("steps:\n  - command: two\n")).jobs[0].id
    with pytest.raises(APIError) as caught:
        await thief.accept(waiting)
    assert caught.value.status == 409


async def test_ping_while_holding_an_assigned_job_returns_the_same_job(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    await api.create_build("steps:\n  - command: one\n  - command: two\n  - command: three\n")
    agent = await new_agent(http, server, "a1")
    first = await agent.ping()
    assert first.job is not None
    for _ in range(3):
        again = await agent.ping()
        assert again.job is not None and again.job.id == first.job.id
    # Another agent gets another job.
    other = await (await new_agent(http, server, "a2")).ping()
    assert other.job is not None and other.job.id != first.job.id


async def test_disconnect_returns_an_unaccepted_job_to_the_queue(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    build = await api.create_build("steps:\n  - command: one\n")
    [job_id] = [j.id for j in build.jobs]
    leaver = await new_agent(http, server, "leaver")
    ping = await leaver.ping()
    assert ping.job is not None and ping.job.id == job_id
    state, holder = await _job_state(api, job_id)
    assert state == p.JobState.ASSIGNED and holder is not None

    await leaver.disconnect()
    assert await _job_state(api, job_id) == (p.JobState.SCHEDULED, None)
    agents = (await api.http.get("/api/v1/agents", params={"all": True})).json()
    assert [(a["name"], a["state"], a["current_job_id"]) for a in agents] == [
        ("leaver", "disconnected", None)
    ]

    stayer = await new_agent(http, server, "stayer")
    spec = await run_job(stayer, 0, b"ran elsewhere\r\n")
    assert spec.id == job_id
    done = p.BuildOut.model_validate(
        (await api.http.get(f"/api/v1/pipelines/test/builds/{build.number}")).json()
    )
    assert done.state == p.BuildState.PASSED
    assert await api.log(job_id) == b"ran elsewhere\r\n"


async def test_jobs_go_to_agents_whose_tags_match(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    build = await api.create_build(
        """
steps:
  - label: mac
    command: xcodebuild
    agents: {queue: mac}
  - label: gpu-linux
    command: train
    agents: {queue: linux, gpu: "nvidia-*"}
"""
    )
    jobs = {j.label: j.id for j in build.jobs}
    plain = await new_agent(http, server, "plain")
    cpu = await new_agent(http, server, "cpu", {"queue": "linux"})
    gpu = await new_agent(http, server, "gpu", {"queue": "linux", "gpu": "nvidia-a100"})
    mac = await new_agent(http, server, "mac", {"queue": "mac"})
    assert (await plain.ping()).job is None
    assert (await cpu.ping()).job is None
    gpu_ping = await gpu.ping()
    assert gpu_ping.job is not None and gpu_ping.job.id == jobs["gpu-linux"]
    mac_ping = await mac.ping()
    assert mac_ping.job is not None and mac_ping.job.id == jobs["mac"]


async def test_finished_agent_gets_the_next_job(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    build = await api.create_build("steps:\n  - command: one\n  - command: two\n")
    agent = await new_agent(http, server, "solo")
    spec, job = await take_job(agent)
    await job.start()
    await finish(job, 0)
    second = await run_job(agent)
    assert {spec.id, second.id} == {j.id for j in build.jobs}
    assert (await agent.ping()).job is None
