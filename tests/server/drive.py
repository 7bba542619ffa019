"""Drive the agent API by hand with the real agent client: register, take a job, run it."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from conveyor import protocol as p
from conveyor.client import AgentClient, JobClient
from conveyor.server.service import ServerHandle


async def new_agent(
    http: httpx.AsyncClient, server: ServerHandle, name: str, tags: dict[str, str] | None = None
) -> AgentClient:
    """A registered, connected agent."""
    assert server.registration_token is not None
    registration = AgentClient(http, server.registration_token)
    reg = await registration.register(p.RegisterRequest(name=name, tags=tags or {}))
    agent = registration.with_token(reg.access_token)
    await agent.connect()
    return agent


async def take_job(agent: AgentClient) -> tuple[p.JobSpec, JobClient]:
    """Ping for a job and accept it."""
    ping = await agent.ping()
    assert ping.job is not None, "the ping offered no job"
    spec = await agent.accept(ping.job.id)
    return spec, agent.job_client(spec)


async def finish(job: JobClient, exit_status: int = 0) -> None:
    await job.finish(p.FinishRequest(exit_status=exit_status, finished_at=datetime.now(UTC)))


async def run_job(agent: AgentClient, exit_status: int = 0, output: bytes = b"") -> p.JobSpec:
    """Take the next job, start it, write `output` as one chunk, and finish it."""
    spec, job = await take_job(agent)
    await job.start()
    if output:
        await job.upload_chunk(1, 0, output)
    await finish(job, exit_status)
    return spec
