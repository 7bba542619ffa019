"""`GET /api/v1/jobs/{id}/log?timestamps=strip|render|raw`: the stored timestamp markers are
stripped by default, rendered as UTC times, or served as stored; a marker split across chunks
and across the server's read batches reads as one."""

from __future__ import annotations

import itertools

import httpx
import pytest

from conveyor.logformat import Stamper
from conveyor.server.service import ServerHandle
from tests.harness import Api
from tests.server.drive import finish, new_agent, take_job

pytestmark = pytest.mark.anyio

T0 = 1_733_470_000_123  # 2024-12-06T07:26:40.123Z
OUTPUT = [b"first line\r\n", b"second ", b"half\r\n", b"\x1b_ct;t=1\x07 looks like one\r\n"]


def stored_log() -> bytes:
    stamper = Stamper(itertools.count(T0, 1000).__next__)
    return b"".join(stamper.feed(w) for w in OUTPUT) + stamper.flush()


async def upload_in_pieces(
    server: ServerHandle, http: httpx.AsyncClient, api: Api, data: bytes, sizes: list[int]
) -> str:
    build = await api.create_build("steps:\n  - command: talk\n")
    spec, job = await take_job(await new_agent(http, server, "a1"))
    assert spec.id == build.jobs[0].id
    await job.start()
    offset = 0
    for sequence, size in enumerate(itertools.cycle(sizes), start=1):
        if offset >= len(data):
            break
        await job.upload_chunk(sequence, offset, data[offset : offset + size])
        offset += size
    await finish(job, 0)
    return spec.id


@pytest.mark.parametrize("sizes", [[1], [3, 5], [7], [1000]])
async def test_a_log_reads_the_same_however_it_was_cut(
    server: ServerHandle, http: httpx.AsyncClient, api: Api, sizes: list[int]
) -> None:
    stored = stored_log()
    job_id = await upload_in_pieces(server, http, api, stored, sizes)

    default = await api.http.get(f"/api/v1/jobs/{job_id}/log")
    assert default.status_code == 200
    assert default.content == b"".join(OUTPUT)
    assert default.headers["x-conveyor-log-size"] == str(len(stored))
    assert default.headers["x-conveyor-log-gaps"] == "0"

    rendered = await api.http.get(f"/api/v1/jobs/{job_id}/log", params={"timestamps": "render"})
    assert rendered.content == (
        b"[2024-12-06T07:26:40.123Z] first line\r\n"
        b"[2024-12-06T07:26:41.123Z] second half\r\n"
        b"[2024-12-06T07:26:43.123Z] \x1b_ct;t=1\x07 looks like one\r\n"
    )
    raw = await api.http.get(f"/api/v1/jobs/{job_id}/log", params={"timestamps": "raw"})
    assert raw.content == stored
    strip = await api.http.get(f"/api/v1/jobs/{job_id}/log", params={"timestamps": "strip"})
    assert strip.content == default.content


async def test_a_marker_cut_short_by_a_hole_is_not_completed_by_what_follows(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    build = await api.create_build("steps:\n  - command: holes\n")
    spec, job = await take_job(await new_agent(http, server, "a1"))
    assert spec.id == build.jobs[0].id
    await job.start()
    await job.upload_chunk(1, 0, b"a\x1b_ct;t=5")
    # The chunk at 10 never arrived; the one after it happens to end like a marker.
    await job.upload_chunk(3, 14, b"6\x07b")
    await finish(job, 0)
    r = await api.http.get(f"/api/v1/jobs/{spec.id}/log")
    assert r.content == b"a\x1b_ct;t=56\x07b"
    assert r.headers["x-conveyor-log-gaps"] == "1"


async def test_an_unknown_timestamps_value_is_refused_naming_it(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    job_id = await upload_in_pieces(server, http, api, stored_log(), [1000])
    r = await api.http.get(f"/api/v1/jobs/{job_id}/log", params={"timestamps": "yes"})
    assert r.status_code == 422
    assert "timestamps" in r.json()["message"]
