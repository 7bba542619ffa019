"""Agent lifecycle against a real server: lost agents, disconnect after a job."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from conveyor import protocol as p
from conveyor.agent import AgentPool, WorkerOptions
from conveyor.client import AgentClient, JobClient, new_http_client
from conveyor.errors import JobGoneError
from conveyor.server.service import ServerHandle
from tests.harness import Api, running_agents, running_server

pytestmark = pytest.mark.anyio


async def test_silent_agent_is_lost_and_its_job_finishes_agent_lost(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv", agent_lost_timeout=2) as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        assert server.registration_token is not None
        build = await api.create_build("steps:\n  - label: long\n    command: sleep 60\n")
        registration = AgentClient(http, server.registration_token)
        registered = await registration.register(p.RegisterRequest(name="silent"))
        agent = registration.with_token(registered.access_token)
        await agent.connect()
        ping = await agent.ping()
        assert ping.job is not None and ping.job.id == build.jobs[0].id
        spec = await agent.accept(ping.job.id)
        job = agent.job_client(spec)
        await job.start()
        # No heartbeats from here on: the reaper must notice within the lost timeout (+ one
        # check interval) and settle the job.
        build = await api.wait_build(build, timeout=20)
        (settled,) = build.jobs
        assert (settled.state, settled.exit_status, settled.signal_reason) == (
            p.JobState.FINISHED,
            -1,
            "agent_lost",
        )
        assert build.state == p.BuildState.FAILED
        agents = (await api.http.get("/api/v1/agents", params={"all": "true"})).json()
        assert [(a["name"], a["state"]) for a in agents] == [("silent", "lost")]
        # If it comes back, the job is no longer its to report on.
        with pytest.raises(JobGoneError):
            await job.state()


async def test_disconnect_after_job(database_url: str, tmp_path: Path) -> None:
    async with running_server(database_url, tmp_path / "srv") as server, Api(server) as api:
        assert server.registration_token is not None
        build = await api.create_build("steps:\n  - command: echo one\n  - command: echo two\n")
        pool = AgentPool(
            WorkerOptions(
                endpoint=server.url,
                registration_token=server.registration_token,
                build_path=tmp_path / "builds",
                disconnect_after_job=True,
            ),
            spawn=1,
        )
        with anyio.fail_after(30):
            await pool.run()  # returns by itself once its one worker has run one job
        assert pool.workers[0].jobs_run == 1
        r = await api.http.get(f"/api/v1/pipelines/test/builds/{build.number}")
        states = sorted(j["state"] for j in r.json()["jobs"])
        assert states == ["finished", "scheduled"]
        agents = (await api.http.get("/api/v1/agents")).json()
        assert agents == []  # it disconnected


async def test_job_whose_token_is_refused_is_cancelled(database_url: str, tmp_path: Path) -> None:
    """A 401 on a job call means the job is no longer this agent's: its process is stopped."""
    pidfile = tmp_path / "pid"
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        running_agents(server, tmp_path / "builds", spawn=1),
    ):
        build = await api.create_build(
            f"steps:\n  - command: echo $$$$ > {pidfile}; "
            "while true; do echo tick; sleep 0.2; done\n"
        )
        with anyio.fail_after(30):
            while not (text := await anyio.Path(pidfile).read_text() if pidfile.exists() else ""):
                await anyio.sleep(0.05)
        pid = int(text)
        async with server.ctx.store.transaction() as tx:
            await tx.revoke_job_tokens(build.jobs[0].id)
        # The next log chunk is refused: the agent stops the command.
        with anyio.fail_after(30):
            while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
                await anyio.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "Z"


async def test_a_job_no_agent_can_take_says_what_it_waits_for(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        running_agents(server, tmp_path / "builds", spawn=1, tags={"os": "linux"}),
    ):
        build = await api.create_build(
            "steps:\n  - label: gpu\n    agents: {queue: gpu}\n    command: echo\n"
            "  - label: any\n    command: echo ok\n"
        )
        r = await api.http.get(f"/api/v1/pipelines/test/builds/{build.number}")
        jobs = {j["label"]: j for j in r.json()["jobs"]}
        assert jobs["gpu"]["state"] == "scheduled"
        assert jobs["gpu"]["waiting_for"] == "waiting for an agent with queue=gpu"
        assert jobs["any"]["waiting_for"] is None
        r = await api.http.get(f"/api/v1/jobs/{jobs['gpu']['id']}")
        assert r.json()["waiting_for"] == "waiting for an agent with queue=gpu"


@pytest.mark.parametrize("mode", ["auto", "ping-only"])
async def test_canceling_a_build_stops_its_running_job(
    database_url: str, tmp_path: Path, mode: str
) -> None:
    """The agent hears of the cancel (stream `cancel_job`, or polling the job's state) and
    stops the command; the job ends canceled."""
    pidfile = tmp_path / "pid"
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        running_agents(server, tmp_path / "builds", spawn=1, ping_mode=mode),
    ):
        build = await api.create_build(f"steps:\n  - command: echo $$$$ > {pidfile}; sleep 60\n")
        with anyio.fail_after(30):
            while not (text := await anyio.Path(pidfile).read_text() if pidfile.exists() else ""):
                await anyio.sleep(0.05)
        r = await api.http.post(f"/api/v1/pipelines/test/builds/{build.number}/cancel")
        assert r.status_code == 200
        done = await api.wait_build(build, timeout=30)
    assert done.state == p.BuildState.CANCELED
    (job,) = done.jobs
    assert (job.state, job.exit_status, job.signal_reason) == (
        p.JobState.CANCELED,
        -1,
        "cancel",
    )
    assert _state(int(text)) == "Z"


RETRY_LOST = """
steps:
  - label: flaky-host
    command: echo ran
    retry:
      automatic:
        - exit_status: -1
          signal_reason: agent_lost
          limit: 1
"""


async def _silent_take(http: httpx.AsyncClient, server: ServerHandle, name: str) -> JobClient:
    """Register an agent that takes a job, starts it, and then never speaks again."""
    assert server.registration_token is not None
    registration = AgentClient(http, server.registration_token)
    registered = await registration.register(p.RegisterRequest(name=name))
    agent = registration.with_token(registered.access_token)
    await agent.connect()
    with anyio.fail_after(10):
        while (ping := await agent.ping()).job is None:
            await anyio.sleep(0.05)
    job = agent.job_client(await agent.accept(ping.job.id))
    await job.start()
    return job


async def test_lost_agent_job_is_retried_once_by_its_rules(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv", agent_lost_timeout=2) as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        build = await api.create_build(RETRY_LOST)
        first = await _silent_take(http, server, "lost-1")
        # The reaper loses it; the rule allows one more attempt, which another silent agent
        # takes and loses too: there is no third attempt.
        second = await _silent_take(http, server, "lost-2")
        assert second.job_id != first.job_id
        done = await api.wait_build(build, timeout=30)
        with pytest.raises(JobGoneError):
            await first.state()  # the first attempt is not the lost agent's any more
    assert done.state == p.BuildState.FAILED
    assert [(j.attempt, j.exit_status, j.signal_reason) for j in done.jobs] == [
        (1, -1, "agent_lost"),
        (2, -1, "agent_lost"),
    ]


async def test_retried_attempt_can_pass(database_url: str, tmp_path: Path) -> None:
    async with (
        running_server(database_url, tmp_path / "srv", agent_lost_timeout=2) as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        build = await api.create_build(RETRY_LOST)
        await _silent_take(http, server, "lost")
        async with running_agents(server, tmp_path / "builds", spawn=1):
            done = await api.wait_build(build, timeout=30)
        assert done.state == p.BuildState.PASSED
        assert [(j.attempt, j.exit_status) for j in done.jobs] == [(1, -1), (2, 0)]
        assert await api.log(done.jobs[1].id) == b"ran\r\n"
