"""Real servers and real agents for tests: in-process, on loopback, in the test's task group."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx

from conveyor import protocol as p
from conveyor.agent import AgentPool, WorkerOptions
from conveyor.config import ServerSettings
from conveyor.server.service import ServerHandle, run_server


@asynccontextmanager
async def running_server(
    database_url: str, data_dir: Path, *, ping_interval: int = 1, **settings: object
) -> AsyncIterator[ServerHandle]:
    cfg = ServerSettings(
        listen="127.0.0.1:0", data_dir=data_dir, database_url=database_url,
        log_level="warning", **settings,
    )  # fmt: skip
    async with anyio.create_task_group() as tg:

        async def serve(*, task_status: anyio.abc.TaskStatus[ServerHandle]) -> None:
            await run_server(cfg, ping_interval=ping_interval, task_status=task_status)

        handle: ServerHandle = await tg.start(serve)
        try:
            yield handle
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def running_agents(
    handle: ServerHandle, build_path: Path, *, spawn: int = 2, **options: object
) -> AsyncIterator[AgentPool]:
    assert handle.registration_token is not None
    pool = AgentPool(
        WorkerOptions(
            endpoint=handle.url, registration_token=handle.registration_token,
            build_path=build_path, **options,  # type: ignore[arg-type]
        ),
        spawn=spawn,
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        try:
            yield pool
        finally:
            # Workers finish their jobs and disconnect; leaving the group waits for them.
            pool.stop()


class Api:
    """A thin REST client for tests, with the server's API token."""

    def __init__(self, handle: ServerHandle):
        assert handle.api_token is not None
        self.handle = handle
        self.http = self.client(handle.url, handle.api_token)

    @staticmethod
    def client(url: str, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Token {token}"}, timeout=60
        )

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def create_build(self, pipeline: str, slug: str = "test", **body: object) -> p.BuildOut:
        r = await self.http.post(
            f"/api/v1/pipelines/{slug}/builds", json={"pipeline": pipeline, **body}
        )
        assert r.status_code == 201, r.text
        return p.BuildOut.model_validate(r.json())

    async def wait_build(self, build: p.BuildOut, timeout: float = 60) -> p.BuildOut:
        with anyio.fail_after(timeout):
            while not build.state.terminal:
                r = await self.http.get(
                    f"/api/v1/pipelines/{build.pipeline}/builds/{build.number}",
                    params={"wait": 30, "after": build.version},
                )
                assert r.status_code == 200, r.text
                build = p.BuildOut.model_validate(r.json())
        return build

    async def log(self, job_id: str) -> bytes:
        r = await self.http.get(f"/api/v1/jobs/{job_id}/log")
        assert r.status_code == 200, r.text
        return r.content
