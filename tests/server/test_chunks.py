"""POST /agent/v1/jobs/{id}/chunks: a body must be the size it says, and only a live job takes
log (see also test_job_flow.test_chunk_upload_rules)."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from conveyor.client import new_http_client
from conveyor.errors import APIError
from conveyor.server.service import ServerHandle
from conveyor.storage.checkpoint import WRITER_CHECKPOINT_PAGES
from tests.harness import Api, running_server
from tests.server.drive import finish, new_agent, next_spec, take_job

pytestmark = pytest.mark.anyio


async def test_a_body_longer_than_its_size_is_refused_and_not_stored(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    await api.create_build("steps:\n  - command: one\n")
    spec, job = await take_job(await new_agent(http, server, "a1"))
    await job.start()
    url = f"/agent/v1/jobs/{spec.id}/chunks"
    auth = {"Authorization": f"Token {spec.token}"}
    for body in [b"123456", b"x" * 4000]:
        r = await http.post(
            url, params={"sequence": 1, "offset": 0, "size": 5}, content=body, headers=auth
        )
        assert r.status_code == 400, body
        assert r.json()["message"] == "body is larger than the 5 bytes its size says"
    # Nothing of them was kept: the offset is free for the right chunk.
    assert (await job.upload_chunk(1, 0, b"12345")).stored
    assert (await job.upload_chunk(2, 5, b"")).stored  # an empty chunk is a chunk too
    await finish(job)
    assert await api.log(spec.id) == b"12345"
    assert (await api.http.get(f"/api/v1/jobs/{spec.id}")).json()["log_size"] == 5


async def test_a_pushed_job_takes_log_once_started(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    """A job pushed with its token is `assigned` until its start lands: its token works, but
    its log is refused until then (the command runs only once the start is taken)."""
    agent = await new_agent(http, server, "pushed")
    async with agent.stream() as messages:
        await api.create_build("steps:\n  - command: one\n")
        with anyio.fail_after(10):
            spec = await next_spec(messages)
    job = agent.job_client(spec)
    with pytest.raises(APIError) as caught:
        await job.upload_chunk(1, 0, b"early")
    assert caught.value.status == 409
    assert "job is assigned: it takes no more log" in str(caught.value)
    await job.start()
    assert (await job.upload_chunk(1, 0, b"started\r\n")).stored
    await finish(job)
    assert await api.log(spec.id) == b"started\r\n"


async def test_sqlite_log_reaches_the_database_file_in_the_background(tmp_path: Path) -> None:
    """The server checkpoints SQLite's write-ahead log from a loop of its own: a log well under
    the writer's own checkpoint ceiling still reaches the database file while the job runs."""
    data_dir = tmp_path / "srv"
    size, count = 1024 * 1024, 6
    assert count * size < WRITER_CHECKPOINT_PAGES * 4096
    async with (
        running_server(
            f"sqlite:///{data_dir / 'conveyor.db'}", data_dir, chunk_max_size=size
        ) as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        db_file = data_dir / "conveyor.db"
        await api.create_build("steps:\n  - command: one\n")
        spec, job = await take_job(await new_agent(http, server, "a1"))
        await job.start()
        before = db_file.stat().st_size
        for i in range(count):
            await job.upload_chunk(i + 1, i * size, bytes([i]) * size)
        with anyio.fail_after(10):
            while db_file.stat().st_size - before < count * size:
                await anyio.sleep(0.05)
        await finish(job)
        assert await api.log(spec.id) == b"".join(bytes([i]) * size for i in range(count))
