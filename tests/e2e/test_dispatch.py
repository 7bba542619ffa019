"""Dispatch end to end: a real server, real agents running real processes, on SQLite and
PostgreSQL. Where a fault is needed (the stream endpoint failing), a small reverse proxy sits
between the agents and the server and refuses `GET /agent/v1/stream` while told to; it also
counts what the agents asked for, and remembers which jobs a ping handed out."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from sqlalchemy import update

from conveyor import protocol as p
from conveyor.agent import AgentPool, WorkerOptions
from conveyor.agent import stream as stream_module
from conveyor.client import AgentClient, new_http_client
from conveyor.errors import APIError
from conveyor.server.reaper import expire_assignments
from conveyor.server.service import ServerHandle
from conveyor.storage import tables as t
from tests.harness import Api, running_agents, running_server
from tests.server.drive import next_spec

pytestmark = pytest.mark.anyio

STREAM_PATH = p.API_PREFIX + "/stream"
PING_PATH = p.API_PREFIX + "/ping"
_HOP_BY_HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"content-length"}

ASGIMessage = dict[str, Any]


class FaultProxy:
    """An ASGI reverse proxy to the real server. Its faults: while `refusing` is set, the
    stream endpoint answers with that status, and streams open at the moment it is set are cut
    (the server side ends them cleanly); while `refusing_starts` is set, a job's `start` call
    gets that status. Everything else passes through untouched."""

    def __init__(self, upstream: httpx.AsyncClient):
        self._upstream = upstream
        self.url = ""
        self.refusing: int | None = None
        self.refusing_starts: int | None = None
        self.requests: Counter[str] = Counter()  # by path
        self.streams_opened = 0
        self.streams_refused = 0
        self.pinged_jobs: set[str] = set()  # jobs a ping answer handed out
        self._cut = anyio.Event()
        self._changed = anyio.Event()

    def refuse_stream(self, status: int = 503) -> None:
        self.refusing = status
        self._cut.set()
        self._cut = anyio.Event()

    def allow_stream(self) -> None:
        self.refusing = None

    def pings(self) -> int:
        return self.requests[PING_PATH]

    async def until(self, check: Any, timeout: float = 30) -> None:
        """Wait (bounded) until `check()` holds; re-checked after every request."""
        with anyio.fail_after(timeout):
            while not check():
                await self._changed.wait()

    def _note(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def __call__(self, scope: ASGIMessage, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        self.requests[path] += 1
        try:
            status = None
            if path == STREAM_PATH and self.refusing is not None:
                self.streams_refused += 1
                status = self.refusing
            elif path.endswith("/start") and self.refusing_starts is not None:
                status = self.refusing_starts
            if status is not None:
                body = json.dumps({"message": "refused by the fault proxy"}).encode()
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json")]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
            await self._forward(scope, receive, send, path)
        finally:
            self._note()

    async def _forward(self, scope: ASGIMessage, receive: Any, send: Any, path: str) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        query = scope["query_string"].decode()
        request = self._upstream.build_request(
            scope["method"], path + (f"?{query}" if query else ""), headers=headers, content=body
        )
        response = await self._upstream.send(request, stream=True)
        try:
            out_headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
            start = {"type": "http.response.start", "status": response.status_code,
                     "headers": out_headers}  # fmt: skip
            if path != STREAM_PATH:
                content = await response.aread()
                if path == PING_PATH and response.status_code == 200:
                    job = json.loads(content).get("job")
                    if job is not None:
                        self.pinged_jobs.add(job["id"])
                await send(start)
                await send({"type": "http.response.body", "body": content})
                return
            await send(start)
            if response.status_code == 200:
                self.streams_opened += 1
                self._note()
            cut = self._cut
            async with anyio.create_task_group() as tg:

                async def pump() -> None:
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})  # fmt: skip
                    tg.cancel_scope.cancel()

                async def client_gone() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                async def cut_off() -> None:
                    await cut.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(pump)
                tg.start_soon(client_gone)
                tg.start_soon(cut_off)
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


class _EmbeddedUvicorn(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def fault_proxy(upstream_url: str) -> AsyncIterator[FaultProxy]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    sock.setblocking(False)
    try:
        async with httpx.AsyncClient(
            base_url=upstream_url,
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=50),
        ) as upstream:
            proxy = FaultProxy(upstream)
            proxy.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            config = uvicorn.Config(
                proxy, log_config=None, access_log=False, lifespan="off",
                timeout_graceful_shutdown=2, log_level="warning",
            )  # fmt: skip
            server = _EmbeddedUvicorn(config)
            async with anyio.create_task_group() as tg:

                async def serve() -> None:
                    with anyio.CancelScope(shield=True):
                        await server.serve(sockets=[sock])

                # The socket already listens: agents may connect before uvicorn accepts.
                tg.start_soon(serve)
                try:
                    yield proxy
                finally:
                    server.should_exit = True
    finally:
        sock.close()


def via(server: ServerHandle, proxy: FaultProxy) -> ServerHandle:
    """The server's handle, as agents behind the proxy see it."""
    return dataclasses.replace(server, url=proxy.url)


@pytest.fixture
def quick_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reconnect windows capped at 0.3 s instead of 64 s, so a test need not wait a minute for
    the stream to come back after it was refused for a while."""
    monkeypatch.setattr(stream_module, "MAX_WINDOW_S", 0.3)


async def get_job(api: Api, job_id: str) -> p.JobOut:
    r = await api.http.get(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return p.JobOut.model_validate(r.json())


def one_step(command: str) -> str:
    return f"steps:\n  - command: {json.dumps(command)}\n"


async def run_one(api: Api, command: str = "echo ran", timeout: float = 30) -> p.JobOut:
    """A one-step build, run to its end; its job."""
    build = await api.wait_build(await api.create_build(one_step(command)), timeout=timeout)
    (job,) = build.jobs
    return job


# ---- stream, ping, fallback ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["stream-only", "auto"])
async def test_the_stream_delivers_jobs_without_pings(
    database_url: str, tmp_path: Path, mode: str
) -> None:
    """With a ping interval of an hour, only the stream can bring a job in time."""
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        fault_proxy(server.url) as proxy,
        Api(server) as api,
        running_agents(
            via(server, proxy), tmp_path / "builds", spawn=2, ping_mode=mode, ping_interval=3600
        ),
    ):
        await proxy.until(lambda: proxy.streams_opened == 2)
        for _ in range(3):
            job = await run_one(api, "echo ran", timeout=5)
            assert job.state == p.JobState.FINISHED and job.exit_status == 0
            assert await api.log(job.id) == b"ran\r\n"
            assert job.runnable_at is not None and job.started_at is not None
            assert (job.started_at - job.runnable_at).total_seconds() < 3
        assert proxy.pings() == 0
        assert proxy.requests[STREAM_PATH] == 2  # never reconnected either


async def test_ping_only_mode_runs_jobs(database_url: str, tmp_path: Path) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        fault_proxy(server.url) as proxy,
        Api(server) as api,
        running_agents(via(server, proxy), tmp_path / "builds", spawn=2, ping_mode="ping-only"),
    ):
        jobs = [await run_one(api) for _ in range(3)]
        assert all(j.state == p.JobState.FINISHED and j.exit_status == 0 for j in jobs)
        assert {j.id for j in jobs} <= proxy.pinged_jobs
        assert proxy.requests[STREAM_PATH] == 0


async def test_fallback_to_pings_and_recovery_of_the_stream(
    database_url: str, tmp_path: Path, quick_reconnect: None
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        fault_proxy(server.url) as proxy,
        Api(server) as api,
        running_agents(via(server, proxy), tmp_path / "builds", spawn=1, ping_mode="auto"),
    ):
        # Served by the stream: the job comes without a ping.
        job = await stream_delivered(api, proxy)

        # The stream endpoint fails: the open stream is cut and reconnects are refused.
        opened = proxy.streams_opened
        proxy.refuse_stream(503)
        await proxy.until(lambda: proxy.streams_refused >= 2)
        for _ in range(3):
            job = await run_one(api)
            assert job.state == p.JobState.FINISHED and job.exit_status == 0
            assert job.id in proxy.pinged_jobs  # the ping loop took over
        assert proxy.streams_opened == opened
        assert proxy.streams_refused >= 3  # the agent kept trying

        # The stream is back: it takes over again once the ping loop is between pings.
        proxy.allow_stream()
        await proxy.until(lambda: proxy.streams_opened > opened)
        await stream_delivered(api, proxy)
        pings = proxy.pings()
        for _ in range(3):
            job = await run_one(api, timeout=10)
            assert job.state == p.JobState.FINISHED and job.exit_status == 0
            assert job.id not in proxy.pinged_jobs
        # While the stream side holds the baton the ping loop asks for nothing.
        assert proxy.pings() == pings
        assert job.attempt == 1


async def stream_delivered(api: Api, proxy: FaultProxy) -> p.JobOut:
    """Run one-step builds until one is delivered by the stream (not by a ping). Right after
    the stream (re)opens, a ping in flight may still win a job; from the first job the stream
    side runs, it holds the baton and pings stop."""
    with anyio.fail_after(30):
        while True:
            job = await run_one(api)
            assert job.state == p.JobState.FINISHED and job.exit_status == 0
            if job.id not in proxy.pinged_jobs:
                return job


async def test_a_refused_stream_in_auto_mode_means_pings_for_good(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        fault_proxy(server.url) as proxy,
        Api(server) as api,
    ):
        proxy.refuse_stream(401)
        async with running_agents(
            via(server, proxy), tmp_path / "builds", spawn=1, ping_mode="auto"
        ) as pool:
            await proxy.until(lambda: proxy.streams_refused == 1)
            job = await run_one(api)
            assert job.exit_status == 0 and job.id in proxy.pinged_jobs
            proxy.allow_stream()
            job = await run_one(api)
            assert job.exit_status == 0 and job.id in proxy.pinged_jobs
            assert proxy.requests[STREAM_PATH] == 1  # never asked again
            assert pool.workers[0].failure is None
            assert pool.workers[0].status()["stream"].startswith("refused")


# ---- exactly once under contention ---------------------------------------------------------

# Fifty builds of ten parallel steps: 500 jobs runnable at once. (Small builds keep the server's
# per-job work small; the run is bound by the job throughput of server and agents in one
# process, about 10-15 jobs/s on a two-core machine.)
JOBS_PER_BUILD = 10
BUILDS = 50


async def test_twenty_agents_race_for_500_jobs_and_each_runs_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    # Each job prints its own id, so a run leaves a mark that names its job (`$$` keeps the
    # variable for the shell: a single `$` would be interpolated when the build is created).
    pipeline = "steps:\n" + "  - command: echo ran-$$CONVEYOR_JOB_ID\n" * JOBS_PER_BUILD
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        anyio.create_task_group() as tg,
    ):
        builds: list[p.BuildOut] = []
        logs: dict[str, bytes] = {}

        async def create() -> None:
            builds.append(await api.create_build(pipeline))

        async def fetch_logs(batch: list[p.JobOut]) -> None:
            for job in batch:
                logs[job.id] = await api.log(job.id)

        # 500 runnable jobs before any agent comes.
        async with anyio.create_task_group() as creators:
            for _ in range(BUILDS):
                creators.start_soon(create)
        # 20 workers: four agent processes of five, as a fleet would run them. `auto` mode: each
        # streams, and pings until its stream is up, so at the start
        # the pusher and the workers' pings both hand out jobs, and a job taken by ping is also
        # offered on the stream that opens next (the agent's accept is then refused).
        pools = [
            agent_pool(server, tmp_path / f"b{i}", spawn=5, ping_mode="auto") for i in range(4)
        ]
        for pool in pools:
            await tg.start(pool.run)
        done = [await api.wait_build(b, timeout=100) for b in builds]
        for pool in pools:
            pool.stop()
        jobs = [j for b in done for j in b.jobs]
        async with anyio.create_task_group() as fetchers:
            for i in range(10):
                fetchers.start_soon(fetch_logs, jobs[i::10])

    workers = [w for pool in pools for w in pool.workers]
    agent_ids = {w.agent_id for w in workers}
    assert len(workers) == 20 and None not in agent_ids
    assert len(jobs) == len({j.id for j in jobs}) == BUILDS * JOBS_PER_BUILD
    assert all(b.state == p.BuildState.PASSED for b in done)
    assert all(j.state == p.JobState.FINISHED and j.exit_status == 0 for j in jobs)
    assert all(j.attempt == 1 and j.agent_id in agent_ids for j in jobs)
    # Every run is a job finished: no job ran twice, none was dropped.
    assert sum(w.jobs_run for w in workers) == BUILDS * JOBS_PER_BUILD
    assert len({j.agent_id for j in jobs}) > 1
    # Each log is its job's one run: its mark, once.
    assert logs == {j.id: f"ran-{j.id}\r\n".encode() for j in jobs}


def agent_pool(server: ServerHandle, build_path: Path, *, spawn: int, **opts: Any) -> AgentPool:
    assert server.registration_token is not None
    return AgentPool(
        WorkerOptions(
            endpoint=server.url, registration_token=server.registration_token,
            build_path=build_path, **opts,
        ),
        spawn=spawn,
    )  # fmt: skip


# ---- who gets the job -----------------------------------------------------------------------


async def until_running(api: Api, build: p.BuildOut) -> p.JobOut:
    """Follow a one-step build (long polls) until its job runs."""
    with anyio.fail_after(30):
        while build.jobs[0].state != p.JobState.RUNNING:
            assert not build.state.terminal, build
            r = await api.http.get(
                f"/api/v1/pipelines/{build.pipeline}/builds/{build.number}",
                params={"wait": 30, "after": build.version},
            )
            assert r.status_code == 200, r.text
            build = p.BuildOut.model_validate(r.json())
    return build.jobs[0]


async def test_warm_cache_the_agent_that_last_finished_a_job_successfully_goes_first(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        fault_proxy(server.url) as proxy,
        Api(server) as api,
        running_agents(
            via(server, proxy), tmp_path / "builds", spawn=2, ping_mode="stream-only"
        ) as pool,
    ):
        await proxy.until(lambda: proxy.streams_opened == 2)  # both idle on their streams
        a, b = (w.agent_id for w in pool.workers)

        # Whoever ran the first job keeps getting them while the other stays idle.
        warm = (await run_one(api)).agent_id
        for _ in range(3):
            assert (await run_one(api)).agent_id == warm
        cold = ({a, b} - {warm}).pop()

        # The warm agent is busy with a long job; the cold one gets a longer one that ends
        # later: it finished a job successfully last, so it is warm now.
        long = await api.create_build(one_step("sleep 0.5"))
        assert (await until_running(api, long)).agent_id == warm
        longer = await api.create_build(one_step("sleep 1.5"))
        assert (await until_running(api, longer)).agent_id == cold
        assert (await api.wait_build(long)).jobs[0].exit_status == 0
        assert (await api.wait_build(longer)).jobs[0].exit_status == 0
        assert (await run_one(api)).agent_id == cold
        warm, cold = cold, warm

        # A failure does not warm anything: the warm agent fails a long job while the other
        # succeeds at a short one; the short one's agent finished a job *successfully* last.
        failing = await api.create_build(one_step("sleep 1.5; exit 1"))
        assert (await until_running(api, failing)).agent_id == warm
        short = await run_one(api, "true")
        assert short.agent_id == cold and short.exit_status == 0
        assert (await api.wait_build(failing)).jobs[0].exit_status == 1
        assert (await run_one(api)).agent_id == cold
        assert proxy.pings() == 0


ROUTED = """
steps:
  - label: gpu-queue
    agents: {queue: gpu}
    command: echo gpu
  - label: not-windows
    agents: {os: "!windows"}
    command: echo not-windows
  - label: arm-wildcard
    agents: {arch: "arm*"}
    command: echo arm
  - label: two-rules
    agents: {os: "lin*", arch: "*64"}
    command: echo two
  - label: not-the-default-queue
    agents: {queue: "!default"}
    command: echo elsewhere
  - label: gpu-wildcard-queue
    agents: {queue: "g*", os: linux}
    command: echo g
  - label: no-rules
    command: echo default
"""


@pytest.mark.parametrize("mode", ["stream-only", "ping-only"])
async def test_routing_by_queue_and_tags(database_url: str, tmp_path: Path, mode: str) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        running_agents(server, tmp_path / "gpu", spawn=1, ping_mode=mode,
                       tags={"queue": "gpu", "os": "linux", "arch": "amd64"}) as gpu,
        running_agents(server, tmp_path / "lin", spawn=1, ping_mode=mode,
                       tags={"os": "linux", "arch": "amd64"}) as lin,
        running_agents(server, tmp_path / "win", spawn=1, ping_mode=mode,
                       tags={"os": "windows", "arch": "arm64"}) as win,
    ):  # fmt: skip
        build = await api.wait_build(await api.create_build(ROUTED))
    assert build.state == p.BuildState.PASSED
    ran_on = {j.label: j.agent_id for j in build.jobs}
    gpu_id, lin_id, win_id = (pool.workers[0].agent_id for pool in (gpu, lin, win))
    assert ran_on == {
        "gpu-queue": gpu_id,
        "not-windows": lin_id,  # win is windows; gpu serves another queue
        "arm-wildcard": win_id,
        "two-rules": lin_id,
        "not-the-default-queue": gpu_id,
        "gpu-wildcard-queue": gpu_id,
        "no-rules": ran_on["no-rules"],
    }
    assert ran_on["no-rules"] in {lin_id, win_id}  # the default queue


async def new_agent(
    http: httpx.AsyncClient, server: ServerHandle, name: str
) -> tuple[str, AgentClient]:
    assert server.registration_token is not None
    registration = AgentClient(http, server.registration_token)
    registered = await registration.register(p.RegisterRequest(name=name))
    agent = registration.with_token(registered.access_token)
    await agent.connect()
    return registered.id, agent


async def next_assignment(messages: AsyncIterator[p.StreamMessage]) -> str:
    async for message in messages:
        if message.type == p.StreamMessageType.JOB_ASSIGNED:
            assert message.job is not None
            return message.job.id
    raise AssertionError("the stream ended")


async def test_an_assignment_never_accepted_goes_to_another_agent(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        # An agent is handed the job on its stream, and is never heard of again.
        sink_id, sink = await new_agent(http, server, "sink")
        async with sink.stream() as messages:
            build = await api.create_build(one_step("echo ran"))
            with anyio.fail_after(10):
                job_id = await next_assignment(messages)
        assert job_id == build.jobs[0].id
        async with running_agents(
            server, tmp_path / "builds", spawn=1, ping_mode="stream-only"
        ) as pool:
            job = await get_job(api, job_id)
            assert (job.state, job.agent_id) == (p.JobState.ASSIGNED, sink_id)
            assert await expire_assignments(server.ctx, older_than=0) == 1
            done = await api.wait_build(build)
        (job,) = done.jobs
        assert (job.state, job.exit_status, job.attempt) == (p.JobState.FINISHED, 0, 1)
        assert job.agent_id == pool.workers[0].agent_id != sink_id
        assert await api.log(job_id) == b"ran\r\n"
        # The first agent, back at last, cannot have it any more.
        with pytest.raises(APIError) as caught:
            await sink.accept(job_id)
        assert caught.value.status == 409


async def test_a_pushed_job_starts_with_its_spec_and_an_expired_push_cannot(
    database_url: str, tmp_path: Path
) -> None:
    """The push carries the job and its token: the agent starts it without an accept. Once the
    assignment has been taken back, that token starts nothing."""
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        _, agent = await new_agent(http, server, "pushed")
        async with agent.stream() as messages:
            first = await api.create_build(one_step("echo one"))
            with anyio.fail_after(10):
                spec = await next_spec(messages)
            assert (spec.id, spec.command) == (first.jobs[0].id, "echo one")
            assert spec.assigned_at is not None and spec.token.startswith("cvj_")
            job = agent.job_client(spec)
            await job.start()  # straight from `assigned`
            assert (await get_job(api, spec.id)).state == p.JobState.RUNNING
            await job.finish(p.FinishRequest(exit_status=0, finished_at=datetime.now(UTC)))
            assert (await api.wait_build(first)).state == p.BuildState.PASSED

            second = await api.create_build(one_step("echo two"))
            with anyio.fail_after(10):
                late = await next_spec(messages)
            assert await expire_assignments(server.ctx, older_than=0) == 1
            # Offered again (to the only agent there is), with a new token...
            with anyio.fail_after(10):
                again = await next_spec(messages)
            assert again.id == late.id == second.jobs[0].id and again.token != late.token
            # ...and the token of the push that was taken back starts nothing.
            with pytest.raises(APIError) as caught:
                await agent.job_client(late).start()
            assert caught.value.status == 401
            await agent.job_client(again).start()
            assert (await get_job(api, again.id)).state == p.JobState.RUNNING


async def test_a_pushed_job_canceled_before_its_start_never_starts(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        _, agent = await new_agent(http, server, "pushed")
        async with agent.stream() as messages:
            build = await api.create_build(one_step("echo never"))
            with anyio.fail_after(10):
                spec = await next_spec(messages)
            r = await api.http.post(f"/api/v1/pipelines/test/builds/{build.number}/cancel")
            assert r.status_code == 200
            with pytest.raises(APIError) as caught:
                await agent.job_client(spec).start()
            assert caught.value.status == 401  # the pushed token went with the cancel
            job = await get_job(api, spec.id)
            assert (job.state, job.started_at) == (p.JobState.CANCELED, None)


async def test_only_the_agent_holding_a_job_can_start_it(database_url: str, tmp_path: Path) -> None:
    """A start that passed its token check as the job was taken back and given to another
    agent (a race, made here by moving the job in the database) is refused."""
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        _, agent = await new_agent(http, server, "first")
        other_id, _ = await new_agent(http, server, "second")
        async with agent.stream() as messages:
            await api.create_build(one_step("echo once"))
            with anyio.fail_after(10):
                spec = await next_spec(messages)
        async with server.ctx.store.transaction() as tx:
            await tx.conn.execute(
                update(t.jobs).where(t.jobs.c.id == spec.id).values(agent_id=other_id)
            )
        with pytest.raises(APIError) as caught:
            await agent.job_client(spec).start()
        assert caught.value.status == 409
        assert "no longer assigned to this agent" in str(caught.value)
        assert (await get_job(api, spec.id)).state == p.JobState.ASSIGNED


async def test_a_pushed_job_whose_start_is_refused_does_not_run(
    database_url: str, tmp_path: Path
) -> None:
    """When the server refuses the start (here a fault of the proxy: a cancel or a reassignment
    in real life), the command is not run, not even for the moment the start takes."""
    ran = tmp_path / "ran"
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        fault_proxy(server.url) as proxy,
        Api(server) as api,
        running_agents(via(server, proxy), tmp_path / "builds", spawn=1, ping_mode="stream-only"),
    ):
        await proxy.until(lambda: proxy.streams_opened == 1)
        proxy.refusing_starts = 409
        clock = anyio.current_time()
        build = await api.create_build(one_step(f"touch {ran}; sleep 30"))
        finish = f"/agent/v1/jobs/{build.jobs[0].id}/finish"
        # The agent tries to report the stopped job (the server refuses: it never started).
        await proxy.until(lambda: proxy.requests[finish] >= 1, timeout=20)
        took = anyio.current_time() - clock
    assert not ran.exists() and took < 15


# ---- known bugs -----------------------------------------------------------------------------


async def test_an_agent_whose_assignment_was_canceled_gets_the_next_job(tmp_path: Path) -> None:
    """A bug of the server's in-memory stream hub: SQLite shows it as well as PostgreSQL."""
    async with (
        running_server(f"sqlite:///{tmp_path / 'conveyor.db'}", tmp_path / "srv") as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        _, agent = await new_agent(http, server, "streaming")
        async with agent.stream() as messages:
            first = await api.create_build(one_step("echo one"))
            with anyio.fail_after(10):
                job_id = await next_assignment(messages)
            assert job_id == first.jobs[0].id
            # The build is canceled before the agent accepts; its accept is refused, as a
            # real agent's would be.
            r = await api.http.post(f"/api/v1/pipelines/test/builds/{first.number}/cancel")
            assert r.status_code == 200
            with pytest.raises(APIError) as caught:
                await agent.accept(job_id)
            assert caught.value.status == 409
            second = await api.create_build(one_step("echo two"))
            offered = None
            with anyio.move_on_after(5):
                offered = await next_assignment(messages)
    assert offered == second.jobs[0].id, "the idle agent was not offered the next job"


async def test_one_agent_process_with_twenty_streaming_workers_runs_jobs(tmp_path: Path) -> None:
    """A bug of the agent's HTTP client setup: one database is enough to show it."""
    async with (
        running_server(f"sqlite:///{tmp_path / 'conveyor.db'}", tmp_path / "srv") as server,
        fault_proxy(server.url) as proxy,
        Api(server) as api,
        running_agents(via(server, proxy), tmp_path / "builds", spawn=20, ping_mode="stream-only"),
    ):
        await proxy.until(lambda: proxy.streams_opened == 20)
        build = await api.create_build(one_step("echo ran"))
        with anyio.move_on_after(10):
            build = await api.wait_build(build)
    assert build.state == p.BuildState.PASSED, "the job did not run within 10 s"
