"""A job's log survives the server going away mid-job: every byte the command wrote is stored
exactly once, in order, and no chunk is counted as failed.

(a) The server process is killed (SIGKILL) while the job writes, and started again on the same
    port, data dir and database, on SQLite and PostgreSQL.
(b) The connection between agent and server is cut for 30 s by a TCP proxy written here: while
    it is down it drops every open connection and closes new ones at once.

The command writes numbered lines for as long as the test lets it (until a file appears), then
says how many it wrote. Chunks are small (4 KiB), so during an outage the agent keeps hundreds
of them on disk.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream

from conveyor import protocol as p
from conveyor.agent import AgentPool, WorkerOptions
from conveyor.runner.logstream import QUEUED_CHUNKS, UPLOADERS
from tests.cli.procs import Background, background, clean_env
from tests.harness import Api, running_server

pytestmark = pytest.mark.anyio

CHUNK_MAX_SIZE = 4096
LINE_SIZE = 50
WRITER = """\
import os, sys, time
stop, started = sys.argv[1], sys.argv[2]
out = sys.stdout.buffer
i = 0
while not os.path.exists(stop):
    out.write(b"%08d " % i + b"y" * 40 + b"\\n")
    out.flush()
    i += 1
    if i == 200:
        open(started, "w").close()
    time.sleep(0.001)
out.write(b"done %d\\n" % i)
"""
_MARKER = re.compile(rb"\x1b_ct;t=(\d+)\x07")


def expected_log(count: int) -> bytes:
    # The PTY turns every \n into \r\n.
    lines = (b"%08d " % i + b"y" * 40 + b"\r\n" for i in range(count))
    return b"".join(lines) + b"done %d\r\n" % count


class Job:
    """The writer job's files: the script, and the two files it and the test signal with."""

    def __init__(self, tmp_path: Path):
        self.script = tmp_path / "writer.py"
        self.script.write_text(WRITER)
        self.stop = tmp_path / "stop"
        self.started = tmp_path / "started"

    @property
    def pipeline(self) -> str:
        command = f"{sys.executable} {self.script} {self.stop} {self.started}"
        return f"steps:\n  - label: writer\n    command: {command}\n"

    async def wait_started(self) -> None:
        # Another process's progress: poll the file it creates, bounded.
        with anyio.fail_after(60):
            while not await anyio.Path(self.started).exists():
                await anyio.sleep(0.05)

    async def let_it_end(self) -> None:
        await anyio.Path(self.stop).touch()


class Rest(Api):
    """The harness's REST calls, for a server in another process (no handle to it)."""

    def __init__(self, url: str, token: str):
        self.http = Api.client(url, token)

    async def create_build(self, pipeline: str, slug: str = "faults", **body: object) -> p.BuildOut:
        return await super().create_build(pipeline, slug, **body)

    async def log_response(self, job_id: str, timestamps: str = "strip") -> httpx.Response:
        r = await self.http.get(f"/api/v1/jobs/{job_id}/log", params={"timestamps": timestamps})
        assert r.status_code == 200, r.text
        return r


@asynccontextmanager
async def agent(endpoint: str, registration_token: str, build_path: Path) -> AsyncIterator[None]:
    pool = AgentPool(
        WorkerOptions(
            endpoint=endpoint, registration_token=registration_token, build_path=build_path
        ),
        spawn=1,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        try:
            yield
        finally:
            pool.stop()


async def check_log(rest: Rest, build: p.BuildOut, outage: tuple[float, float]) -> None:
    """Stored once, in order, complete; and lines were written while the server was away."""
    job = build.jobs[0]
    assert (job.state, job.exit_status, job.chunks_failed_count) == (p.JobState.FINISHED, 0, 0)
    log = (await rest.log_response(job.id)).content
    count = int(log.rsplit(b"done ", 1)[1])
    assert log == expected_log(count)
    raw = await rest.log_response(job.id, "raw")
    assert raw.headers["x-conveyor-log-gaps"] == "0"
    assert int(raw.headers["x-conveyor-log-size"]) == len(raw.content) == job.log_size
    start, end = (int(t * 1000) for t in outage)
    during = [ms for ms in map(int, _MARKER.findall(raw.content)) if start < ms < end]
    # More than memory and the terminal's buffer could have held: the job did not wait for
    # the server, and the rest of its output waited on disk.
    held = (QUEUED_CHUNKS + UPLOADERS) * CHUNK_MAX_SIZE + 128 * 1024
    assert len(during) * LINE_SIZE > held, f"only {len(during)} lines written during the outage"


# --- (a) the server process is killed and started again ---------------------------------------


@asynccontextmanager
async def server_process(
    data_dir: Path, database_url: str, listen: str
) -> AsyncIterator[Background]:
    async with background(
        "server", "--listen", listen, "--data-dir", str(data_dir),
        "--database-url", database_url, "--chunk-max-size", str(CHUNK_MAX_SIZE),
        "--log-level", "warning", env=clean_env(),
    ) as server:  # fmt: skip
        yield server


@pytest.mark.timeout(240)
async def test_server_killed_and_restarted_mid_job(database_url: str, tmp_path: Path) -> None:
    job = Job(tmp_path)
    data_dir = tmp_path / "server"
    async with server_process(data_dir, database_url, "127.0.0.1:0") as first:
        url = (await first.line_starting("Conveyor server listening on")).split()[-1]
        registration = (await first.line_starting("Agent registration token:")).split()[-1]
        api_token = (await first.line_starting("API token:")).split()[-1]
        rest = Rest(url, api_token)
        async with agent(url, registration, tmp_path / "builds"):
            build = await rest.create_build(job.pipeline)
            await job.wait_started()
            killed_at = time.time()
            first.process.kill()
            await first.process.wait()
            # The job goes on writing while no server listens.
            await anyio.sleep(10)
            async with server_process(data_dir, database_url, url.removeprefix("http://")) as again:
                await again.line_starting("Conveyor server listening on")
                back_at = time.time()
                await job.let_it_end()
                build = await rest.wait_build(build, timeout=180)
                await check_log(rest, build, (killed_at, back_at))
        await rest.http.aclose()


# --- (b) the connection is cut for 30 s -------------------------------------------------------


class Proxy:
    """agent → proxy → server. `cut()` drops every open connection and closes new ones at once
    until `restore()`."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.up = True
        self.url = ""
        self.dropped = 0
        self._open: set[anyio.CancelScope] = set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            self.url = f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}"
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            if not self.up:
                self.dropped += 1
                return
            upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
            async with upstream, anyio.create_task_group() as tg:
                self._open.add(tg.cancel_scope)
                tg.start_soon(self._pipe, client, upstream, tg.cancel_scope)
                tg.start_soon(self._pipe, upstream, client, tg.cancel_scope)
            self._open.discard(tg.cancel_scope)

    @staticmethod
    async def _pipe(source: SocketStream, sink: SocketStream, scope: anyio.CancelScope) -> None:
        try:
            async for data in source:
                await sink.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            scope.cancel()  # one side ended: end the other

    def cut(self) -> None:
        self.up = False
        for scope in list(self._open):
            self.dropped += 1
            scope.cancel()

    def restore(self) -> None:
        self.up = True


@pytest.mark.timeout(240)
async def test_connection_cut_for_thirty_seconds_mid_job(database_url: str, tmp_path: Path) -> None:
    job = Job(tmp_path)
    async with (
        running_server(database_url, tmp_path / "srv", chunk_max_size=CHUNK_MAX_SIZE) as server,
        anyio.create_task_group() as tg,
    ):
        assert server.registration_token is not None and server.api_token is not None
        proxy = Proxy(int(server.url.rsplit(":", 1)[1]))
        await tg.start(proxy.serve)
        rest = Rest(server.url, server.api_token)
        async with agent(proxy.url, server.registration_token, tmp_path / "builds"):
            build = await rest.create_build(job.pipeline)
            await job.wait_started()
            cut_at = time.time()
            proxy.cut()
            await anyio.sleep(30)
            proxy.restore()
            back_at = time.time()
            await job.let_it_end()
            build = await rest.wait_build(build, timeout=180)
            await check_log(rest, build, (cut_at, back_at))
        # Connections were dropped and refused: the fault did happen.
        assert proxy.dropped > 1
        await rest.http.aclose()
        tg.cancel_scope.cancel()
