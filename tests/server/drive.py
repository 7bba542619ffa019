"""Drive the agent API by hand with the real agent client: register, take a job, run it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx

from conveyor import protocol as p
from conveyor.client import AgentClient, JobClient
from conveyor.server.service import ServerHandle
from tests.harness import Api


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


async def next_spec(messages: AsyncIterator[p.StreamMessage]) -> p.JobSpec:
    """The spec of the next job pushed on an agent's stream."""
    async for message in messages:
        if message.type == p.StreamMessageType.JOB_ASSIGNED:
            assert message.spec is not None
            return message.spec
    raise AssertionError("the stream ended")


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


def steps(*lines: str) -> str:
    return "steps:\n" + "".join(f"  {line}\n" for line in lines)


def cmd(label: str, *extra: str) -> str:
    """A command step on its own queue, as YAML lines."""
    body = [f"- label: {label}", f"  command: run {label}", f"  agents: {{queue: {label}}}"]
    return "\n  ".join(body + [f"  {e}" for e in extra])


class Driver:
    """One build of pipeline `slug`, moved along by agents that each serve one queue."""

    def __init__(self, server: ServerHandle, http: httpx.AsyncClient, api: Api):
        self.server, self.http, self.api = server, http, api
        self.agents: dict[str, AgentClient] = {}
        self.build: p.BuildOut | None = None

    async def create(self, pipeline: str, slug: str = "test", **body: object) -> p.BuildOut:
        self.build = await self.api.create_build(pipeline, slug=slug, **body)
        return self.build

    async def refresh(self) -> p.BuildOut:
        assert self.build is not None
        r = await self.api.http.get(
            f"/api/v1/pipelines/{self.build.pipeline}/builds/{self.build.number}"
        )
        assert r.status_code == 200, r.text
        self.build = p.BuildOut.model_validate(r.json())
        return self.build

    async def steps(self) -> dict[str, str]:
        """Step label (or key, or kind) → state."""
        build = await self.refresh()
        return {s.label or s.key or s.kind: s.state for s in build.steps}

    async def jobs(self) -> dict[str, str]:
        """Job label → state."""
        build = await self.refresh()
        return {j.label: j.state.value for j in build.jobs}

    states = jobs

    async def agent(self, label: str) -> AgentClient:
        if label not in self.agents:
            self.agents[label] = await new_agent(self.http, self.server, label, {"queue": label})
        return self.agents[label]

    async def take(self, label: str) -> tuple[p.JobSpec, JobClient]:
        """The agent of `label`'s queue takes that job and starts it."""
        spec, job = await take_job(await self.agent(label))
        assert spec.label == label
        await job.start()
        return spec, job

    async def run(self, label: str, exit_status: int = 0) -> p.JobSpec:
        """The agent of `label`'s queue takes that job and finishes it with `exit_status`."""
        spec, job = await self.take(label)
        await finish(job, exit_status)
        return spec

    async def offered(self, label: str) -> bool:
        return (await (await self.agent(label)).ping()).job is not None

    async def unblock(self, step: str, **fields: Any) -> httpx.Response:
        assert self.build is not None
        return await self.api.http.post(
            f"/api/v1/pipelines/{self.build.pipeline}/builds/{self.build.number}"
            f"/steps/{step}/unblock",
            json={"fields": fields},
        )

    async def retry(self, job_id: str) -> httpx.Response:
        return await self.api.http.post(f"/api/v1/jobs/{job_id}/retry")
