"""Dispatch through the agent API: who gets which job, and what happens to unaccepted jobs."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import event

from conveyor import protocol as p
from conveyor.errors import APIError, JobGoneError
from conveyor.server.service import ServerHandle
from tests.harness import Api
from tests.server.drive import finish, new_agent, next_spec, run_job, take_job

pytestmark = pytest.mark.anyio


async def _job_state(api: Api, job_id: str) -> tuple[p.JobState, str | None]:
    job = p.JobOut.model_validate((await api.http.get(f"/api/v1/jobs/{job_id}")).json())
    return job.state, job.agent_id


async def test_accept_of_a_job_assigned_to_another_agent_conflicts(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    build = await api.create_build("steps:\n  - command: one\n  - command: two\n")
    owner = await new_agent(http, server, "owner")
    thief = await new_agent(http, server, "thief")
    ping = await owner.ping()
    assert ping.job is not None and ping.job.id == build.jobs[0].id
    # Pinging again while holding the unaccepted job gives the same job, not a second one.
    for _ in range(2):
        again = await owner.ping()
        assert again.job is not None and again.job.id == ping.job.id
    with pytest.raises(APIError) as caught:
        await thief.accept(ping.job.id)
    assert caught.value.status == 409
    assert "not assigned to you" in str(caught.value)
    state, holder = await _job_state(api, ping.job.id)
    assert state == p.JobState.ASSIGNED and holder is not None
    # The owner still can.
    spec = await owner.accept(ping.job.id)
    assert spec.id == ping.job.id
    # A scheduled job nobody was given cannot be accepted either.
    with pytest.raises(APIError) as caught:
        await thief.accept(build.jobs[1].id)
    assert caught.value.status == 409
    # The thief gets the other job by asking for work.
    offered = await thief.ping()
    assert offered.job is not None and offered.job.id == build.jobs[1].id


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
    # The agent's token went with it.
    with pytest.raises(APIError) as caught:
        await leaver.ping()
    assert caught.value.status == 401
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


async def test_disconnect_while_running_finishes_the_job_as_agent_stop(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    build = await api.create_build("steps:\n  - command: one\n  - wait\n  - command: two\n")
    agent = await new_agent(http, server, "quitter")
    spec, job = await take_job(agent)
    await job.start()
    await job.upload_chunk(1, 0, b"half")
    await agent.disconnect()
    done = p.BuildOut.model_validate(
        (await api.http.get(f"/api/v1/pipelines/test/builds/{build.number}")).json()
    )
    assert done.state == p.BuildState.FAILED
    first, second = done.jobs
    assert (first.state, first.exit_status, first.signal_reason) == (
        p.JobState.FINISHED,
        -1,
        "agent_stop",
    )
    assert second.state == p.JobState.SKIPPED
    # Its job token went with it.
    with pytest.raises(JobGoneError):
        await job.finish(p.FinishRequest(exit_status=0, finished_at=done.created_at))
    assert await api.log(spec.id) == b"half"


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
    # A default-queue job goes to the agent without a queue tag, once it is free.
    more = await api.create_build("steps:\n  - command: one\n  - command: two\n")
    first = await run_job(plain)
    second = await run_job(plain)
    assert {first.id, second.id} == {j.id for j in more.jobs}
    assert (await plain.ping()).job is None


# ---- streams: assignment inside the transaction that makes work available --------------------


class Transactions:
    """The statements of each committed transaction on the server's database, in order."""

    def __init__(self, server: ServerHandle) -> None:
        self.engine = server.ctx.store.db.engine.sync_engine
        self.open: dict[int, list[str]] = {}
        self.committed: list[list[str]] = []

    def _statement(self, conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.open.setdefault(id(conn), []).append(" ".join(statement.split()))

    def _commit(self, conn: Any) -> None:
        self.committed.append(self.open.pop(id(conn), []))

    def __enter__(self) -> Transactions:
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine, "commit", self._commit)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._commit)

    def one_with(self, start: str, *parts: str) -> list[str]:
        """The one transaction with a statement that starts so (and has `parts`)."""
        (found,) = [
            tx
            for tx in self.committed
            if any(s.startswith(start) and all(p in s for p in parts) for s in tx)
        ]
        return found


def _assigns(statements: list[str]) -> bool:
    return any(s.startswith("UPDATE jobs SET state=") and "agent_id=" in s for s in statements)


async def test_a_build_is_given_to_an_idle_streaming_agent_in_the_transaction_creating_it(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    """No second transaction (nor a wake-up of the pusher) between a job becoming runnable and
    its push: the transaction that creates the build assigns it, with the pushed token; and
    the one that finishes it gives the agent the job that waited meanwhile."""
    agent = await new_agent(http, server, "streaming")
    async with agent.stream() as messages:
        with Transactions(server) as log:
            first = await api.create_build("steps:\n  - command: one\n")
            with anyio.fail_after(10):
                spec = await next_spec(messages)
        assert spec.id == first.jobs[0].id
        created = log.one_with("INSERT INTO builds")
        assert _assigns(created)
        assert any(s.startswith("INSERT INTO tokens") for s in created)

        second = await api.create_build("steps:\n  - command: two\n")  # waits: the agent is busy
        job = agent.job_client(spec)
        await job.start()
        with Transactions(server) as log:
            await finish(job)
            with anyio.fail_after(10):
                following = await next_spec(messages)
        assert following.id == second.jobs[0].id
        finished = log.one_with("UPDATE jobs SET state=", "exit_status=")
        assert _assigns(finished)


async def test_streaming_agents_keep_to_concurrency_groups(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    """At most `concurrency` jobs of a group run at once, also when they go out on streams."""
    step = "steps:\n  - {command: deploy, concurrency: 1, concurrency_group: prod}\n"
    first = await api.create_build(step)
    pinging = await new_agent(http, server, "pinging")
    spec, running = await take_job(pinging)
    assert spec.id == first.jobs[0].id
    await running.start()
    streaming = await new_agent(http, server, "streaming")
    async with streaming.stream() as messages:
        second = await api.create_build(step)
        await server.ctx.streams.dispatch()  # a full pass: still nothing to hand out
        assert await _job_state(api, second.jobs[0].id) == (p.JobState.SCHEDULED, None)
        await finish(running)  # the group has room again
        with anyio.fail_after(10):
            spec = await next_spec(messages)
        assert spec.id == second.jobs[0].id


async def test_a_group_slot_freed_by_a_disconnect_goes_to_a_streaming_agent_at_once(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    step = "steps:\n  - {command: deploy, concurrency: 1, concurrency_group: prod}\n"
    await api.create_build(step)
    leaving = await new_agent(http, server, "leaving")
    _, running = await take_job(leaving)
    await running.start()
    streaming = await new_agent(http, server, "streaming")
    async with streaming.stream() as messages:
        second = await api.create_build(step)
        assert await _job_state(api, second.jobs[0].id) == (p.JobState.SCHEDULED, None)
        # Its running job ends (agent_stop) in the disconnect's transaction, which hands the
        # waiting job out before it commits.
        await leaving.disconnect()
        state, holder = await _job_state(api, second.jobs[0].id)
        assert state == p.JobState.ASSIGNED and holder is not None
        with anyio.fail_after(10):
            spec = await next_spec(messages)
        assert spec.id == second.jobs[0].id
