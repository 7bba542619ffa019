"""What the benchmarks share: a real server and real agents on loopback, a REST client, stats.

The server runs in the benchmark's own process (as in tests/harness.py): uvicorn on
127.0.0.1:0, SQLite in a temporary directory. Agents run either in-process (`AgentPool`s in the
same event loop) or as separate `conveyor agent start` processes; see `agents()`.

Not a test helper: nothing here asserts, it measures.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc
import httpx

from conveyor import protocol as p
from conveyor.agent import AgentPool, WorkerOptions
from conveyor.config import ServerSettings
from conveyor.protocol import PingMode
from conveyor.server.service import ServerHandle, run_server

T = TypeVar("T")
R = TypeVar("R")

# One agent process (one AgentPool, one HTTP client) runs at most this many workers. The
# agent's HTTP client allows 20 connections and every streaming worker holds one for good, so
# a single pool of 20 or more streaming workers cannot even register them all.
DEFAULT_WORKERS_PER_POOL = 10
READY_TIMEOUT_S = 120.0
_TOO_MANY = (
    "one agent process (one HTTP client, 20 connections) cannot stream more than 19 workers; "
    "use more pools or processes (--workers-per-pool, --agent-processes)"
)
STOP_TIMEOUT_S = 30.0
# A change notification missed (it came before we listened) costs at most this much waiting.
NOTIFY_SAFETY_S = 1.0


def progress(message: str) -> None:
    """Progress for long runs goes to stderr; stdout carries the results."""
    print(message, file=sys.stderr, flush=True)


def quiet_logging() -> None:
    """Only warnings and errors from the server and in-process agents."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run(main: Callable[[T], Awaitable[R]], args: T) -> R:
    """`anyio.run(main, args)`, stopped cleanly (agents, server, temporary files) by SIGINT or
    SIGTERM, which exit with 128 + the signal; a failure is reported in one line, status 1."""
    stopped_by: list[int] = []

    async def guarded() -> R:
        result: list[R] = []
        async with anyio.create_task_group() as tg:

            async def watch_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        progress(f"{signal.Signals(signum).name}: stopping")
                        stopped_by.append(signum)
                        tg.cancel_scope.cancel()
                        return

            async def body() -> None:
                result.append(await main(args))
                tg.cancel_scope.cancel()

            tg.start_soon(watch_signals)
            tg.start_soon(body)
        if not result:
            raise SystemExit(128 + (stopped_by[0] if stopped_by else signal.SIGTERM))
        return result[0]

    try:
        return anyio.run(guarded)
    except* (RuntimeError, TimeoutError, OSError, httpx.HTTPError) as group:
        errors = list(_leaves(group))
        for exc in errors:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# ---- the server ---------------------------------------------------------------------------------


@asynccontextmanager
async def running_server(data_dir: Path, *, ping_interval: int) -> AsyncIterator[ServerHandle]:
    """A real server on 127.0.0.1:0 with SQLite in `data_dir`, stopped on exit."""
    settings = ServerSettings(listen="127.0.0.1:0", data_dir=data_dir, log_level="warning")
    async with anyio.create_task_group() as tg:

        async def serve(*, task_status: anyio.abc.TaskStatus[ServerHandle]) -> None:
            await run_server(settings, ping_interval=ping_interval, task_status=task_status)

        handle: ServerHandle = await tg.start(serve)
        try:
            yield handle
        finally:
            tg.cancel_scope.cancel()


async def wait_quietly(
    handle: ServerHandle, api: Api, build: p.BuildOut, *, changes: int, timeout: float
) -> p.JobOut:
    """The build's only job once terminal, read only after the build changed `changes` times.

    Long-polling the build from the moment it is created would put the benchmark's own
    requests (three or four transactions per change on the server's one SQLite connection)
    in the middle of the path being measured. Instead this waits on the in-process server's
    change notifier, which costs the server nothing, and reads the job (GET /api/v1/jobs/ID)
    once it should be done; if it is not (a change was missed), it long-polls from there.
    """
    (job,) = build.jobs
    key = f"build:{build.id}"
    with anyio.fail_after(timeout):
        for _ in range(changes):
            changed = handle.ctx.notifier.subscribe(key)
            with anyio.move_on_after(NOTIFY_SAFETY_S):
                await changed.wait()
        job = await api.get_job(job.id)
        if not job.state.terminal:
            await api.wait_build(build, timeout)
            job = await api.get_job(job.id)
    return job


def open_streams(handle: ServerHandle) -> int:
    """How many agent streams the server holds open right now (in-process server only)."""
    return len(handle.ctx.streams._streams)


class Api:
    """The REST API with the server's API token."""

    def __init__(self, handle: ServerHandle) -> None:
        self.http = httpx.AsyncClient(
            base_url=handle.url,
            headers={"Authorization": f"Token {handle.api_token}"},
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=50),
        )

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def create_build(self, pipeline: str, slug: str = "bench") -> p.BuildOut:
        r = await self.http.post(f"/api/v1/pipelines/{slug}/builds", json={"pipeline": pipeline})
        if r.status_code != 201:
            raise RuntimeError(f"creating a build failed: {r.status_code} {r.text}")
        return p.BuildOut.model_validate(r.json())

    async def get_build(self, build: p.BuildOut, *, wait: float) -> p.BuildOut:
        """The build once its version differs from `build`'s, or after `wait` seconds.

        Always with a wait: the server cancels a read made without one half-way (see
        docs/benchmarks.md), which costs it its database connection.
        """
        r = await self.http.get(
            f"/api/v1/pipelines/{build.pipeline}/builds/{build.number}",
            params={"wait": wait, "after": build.version},
        )
        if r.status_code != 200:
            raise RuntimeError(f"reading build {build.number} failed: {r.status_code} {r.text}")
        return p.BuildOut.model_validate(r.json())

    async def get_job(self, job_id: str) -> p.JobOut:
        r = await self.http.get(f"/api/v1/jobs/{job_id}")
        if r.status_code != 200:
            raise RuntimeError(f"reading job {job_id} failed: {r.status_code} {r.text}")
        return p.JobOut.model_validate(r.json())

    async def wait_build(self, build: p.BuildOut, timeout: float) -> p.BuildOut:
        """The build once terminal, by long polls (the server answers when it changes)."""
        with anyio.fail_after(timeout):
            while not build.state.terminal:
                build = await self.get_build(build, wait=30)
        return build

    async def log(self, job_id: str) -> bytes:
        r = await self.http.get(f"/api/v1/jobs/{job_id}/log")
        if r.status_code != 200:
            raise RuntimeError(f"reading job {job_id}'s log failed: {r.status_code} {r.text}")
        return r.content

    async def connected_agents(self) -> int:
        r = await self.http.get("/api/v1/agents")
        if r.status_code != 200:
            raise RuntimeError(f"listing agents failed: {r.status_code} {r.text}")
        return sum(1 for a in r.json() if a["state"] == "connected")


# ---- the agents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentPlan:
    count: int
    ping_mode: PingMode
    # 0: in-process AgentPools in the benchmark's event loop; K > 0: K agent processes.
    processes: int
    workers_per_pool: int = DEFAULT_WORKERS_PER_POOL

    def split(self) -> list[int]:
        """Workers per pool (in-process) or per process, as even as possible."""
        parts = self.processes or max(1, math.ceil(self.count / self.workers_per_pool))
        parts = min(parts, self.count)
        base, extra = divmod(self.count, parts)
        return [base + (1 if i < extra else 0) for i in range(parts)]

    def describe(self) -> str:
        sizes = self.split()
        where = (
            f"{len(sizes)} separate `conveyor agent start` processes"
            if self.processes
            else f"{len(sizes)} in-process AgentPool(s) in the benchmark's event loop"
        )
        return f"{self.count} workers ({'+'.join(map(str, sizes))}) in {where}, {self.ping_mode}"


@asynccontextmanager
async def running_agents(
    handle: ServerHandle, build_path: Path, plan: AgentPlan, log_dir: Path
) -> AsyncIterator[None]:
    """Start the agents; yield once all are registered (and, unless pinging, streaming)."""
    if plan.processes:
        async with _agent_processes(handle, build_path, plan, log_dir) as procs:
            await _wait_ready(handle, plan, procs)
            yield
    else:
        async with _agent_pools(handle, build_path, plan):
            await _wait_ready(handle, plan, [])
            yield


async def _wait_ready(
    handle: ServerHandle, plan: AgentPlan, procs: list[tuple[anyio.abc.Process, Path]]
) -> None:
    """Until every worker is connected (ping) or has its stream open (stream); bounded."""
    streaming = plan.ping_mode != "ping-only"
    ready = 0
    async with Api(handle) as api:
        with anyio.move_on_after(READY_TIMEOUT_S):
            while True:
                for proc, log_path in procs:
                    if proc.returncode is not None:
                        tail = log_path.read_text(errors="replace")[-2000:]
                        raise RuntimeError(
                            f"agent process {proc.pid} exited with {proc.returncode}:\n{tail}"
                        )
                ready = open_streams(handle) if streaming else await api.connected_agents()
                if ready >= plan.count:
                    return
                await anyio.sleep(0.1)
    what = "have a stream open" if streaming else "are connected"
    raise RuntimeError(
        f"only {ready} of {plan.count} agent workers {what} after {READY_TIMEOUT_S:.0f}s: "
        + _TOO_MANY
    )


@asynccontextmanager
async def _agent_pools(
    handle: ServerHandle, build_path: Path, plan: AgentPlan
) -> AsyncIterator[None]:
    assert handle.registration_token is not None
    pools = [
        AgentPool(
            WorkerOptions(
                endpoint=handle.url,
                registration_token=handle.registration_token,
                name=f"bench{i + 1}-%spawn",
                build_path=build_path,
                ping_mode=plan.ping_mode,
            ),
            spawn=size,
        )
        for i, size in enumerate(plan.split())
    ]
    async with anyio.create_task_group() as tg:
        try:
            # A pool is started once every worker of it has registered.
            with anyio.move_on_after(READY_TIMEOUT_S) as starting:
                for pool in pools:
                    await tg.start(pool.run)
            if starting.cancelled_caught:
                raise RuntimeError(
                    f"the agent pools did not register their workers within "
                    f"{READY_TIMEOUT_S:.0f}s: {_TOO_MANY}"
                )
            yield
        finally:
            for pool in pools:
                pool.stop()
            # Leaving the group waits for every worker to disconnect; bounded all the same.
            tg.cancel_scope.deadline = anyio.current_time() + STOP_TIMEOUT_S


@asynccontextmanager
async def _agent_processes(
    handle: ServerHandle, build_path: Path, plan: AgentPlan, log_dir: Path
) -> AsyncIterator[list[tuple[anyio.abc.Process, Path]]]:
    assert handle.registration_token is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    procs: list[tuple[anyio.abc.Process, Path]] = []
    try:
        for i, size in enumerate(plan.split()):
            log_path = log_dir / f"agent{i + 1}.log"
            argv = [
                sys.executable, "-m", "conveyor", "agent", "start",
                "--endpoint", handle.url, "--token", handle.registration_token,
                "--spawn", str(size), "--name", f"bench{i + 1}-%spawn",
                "--build-path", str(build_path), "--ping-mode", plan.ping_mode,
            ]  # fmt: skip
            with log_path.open("wb") as log_file:
                proc = await anyio.open_process(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            procs.append((proc, log_path))
        yield procs
    finally:
        with anyio.CancelScope(shield=True):
            await _stop_processes(procs)


async def _stop_processes(procs: list[tuple[anyio.abc.Process, Path]]) -> None:
    """SIGTERM (graceful: finish, disconnect), then SIGKILL to the group after the deadline."""
    for proc, _ in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc, log_path in procs:
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await proc.wait()
        if proc.returncode is None:
            progress(f"agent process {proc.pid} did not stop in time: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        elif proc.returncode != 0:
            tail = log_path.read_text(errors="replace")[-2000:]
            progress(f"agent process {proc.pid} exited with {proc.returncode}:\n{tail}")
        await proc.aclose()
