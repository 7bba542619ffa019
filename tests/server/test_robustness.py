"""Bad input is answered with a 4xx naming the problem, never a 500; answers are not delayed."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from conveyor.server.service import ServerHandle
from tests.harness import Api
from tests.server.drive import new_agent, take_job

pytestmark = pytest.mark.anyio


async def test_timestamps_without_a_zone_are_422(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    await api.create_build("steps:\n  - command: one\n")
    spec, job = await take_job(await new_agent(http, server, "a1"))
    headers = {"Authorization": f"Token {spec.token}"}
    r = await http.put(
        f"/agent/v1/jobs/{spec.id}/start",
        json={"started_at": "2030-01-01T00:00:00"},
        headers=headers,
    )
    assert r.status_code == 422, r.text
    assert "started_at" in r.json()["message"]
    await job.start()
    r = await http.put(
        f"/agent/v1/jobs/{spec.id}/finish",
        json={"exit_status": 0, "finished_at": "2030-01-01T00:00:00"},
        headers=headers,
    )
    assert r.status_code == 422, r.text
    assert "finished_at" in r.json()["message"]
    # With a zone, any zone, it is taken.
    r = await http.put(
        f"/agent/v1/jobs/{spec.id}/finish",
        json={"exit_status": 0, "finished_at": "2030-01-01T02:00:00+02:00"},
        headers=headers,
    )
    assert r.status_code == 204, r.text
    finished = (await api.http.get(f"/api/v1/jobs/{spec.id}")).json()["finished_at"]
    assert finished.startswith("2030-01-01T00:00:00")


async def test_values_too_big_for_their_columns_are_422(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    answers: dict[str, int] = {}

    async def check(what: str, response: httpx.Response) -> None:
        answers[what] = response.status_code

    ok = "steps:\n  - command: one\n  - command: two\n"
    for field, value in [("branch", "b" * 256), ("commit", "c" * 256)]:
        r = await api.http.post(
            "/api/v1/pipelines/test/builds", json={"pipeline": ok, field: value}
        )
        await check(f"build {field}", r)
    r = await api.http.post(f"/api/v1/pipelines/{'s' * 101}/builds", json={"pipeline": ok})
    await check("pipeline slug", r)

    assert server.registration_token is not None
    registration = {"Authorization": f"Token {server.registration_token}"}
    register_fields: list[tuple[str, Any]] = [
        ("hostname", "h" * 256),
        ("os", "o" * 33),
        ("arch", "a" * 33),
        ("version", "v" * 33),
        ("priority", 2**31),
        ("pid", 2**31),
    ]
    for field, value in register_fields:
        r = await http.post(
            "/agent/v1/register", json={"name": "agent", field: value}, headers=registration
        )
        await check(f"register {field}", r)

    # Each finish is tried on a job of its own: a finish that is taken ends the job.
    await api.create_build(ok)
    finish_fields: list[tuple[str, Any]] = [("signal", "SIG" + "X" * 14), ("exit_status", 2**31)]
    for n, (field, value) in enumerate(finish_fields):
        spec, job = await take_job(await new_agent(http, server, f"a{n}"))
        await job.start()
        job_auth = {"Authorization": f"Token {spec.token}"}
        if n == 0:
            chunks = f"/agent/v1/jobs/{spec.id}/chunks"
            for params in [
                {"sequence": 2**31, "offset": 0, "size": 1},
                {"sequence": 1, "offset": 2**63, "size": 1},
            ]:
                r = await http.post(chunks, params=params, content=b"x", headers=job_auth)
                await check(f"chunk {params}", r)
        r = await http.put(
            f"/agent/v1/jobs/{spec.id}/finish",
            json={"exit_status": 0, "finished_at": "2030-01-01T00:00:00Z", field: value},
            headers=job_auth,
        )
        await check(f"finish {field}", r)

    assert {what: status for what, status in answers.items() if status != 422} == {}


def _server_side_nodelay(port: int) -> list[int]:
    """TCP_NODELAY of every connection this process accepted on `port`."""
    values: list[int] = []
    for entry in Path("/proc/self/fd").iterdir():
        try:
            sock = socket.fromfd(int(entry.name), socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        with sock:
            try:
                local, peer = sock.getsockname(), sock.getpeername()
            except OSError:
                continue  # not a socket, or not connected (the listener)
            if isinstance(local, tuple) and local[1] == port and peer[1] != port:
                values.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    return values


async def test_accepted_connections_do_not_delay_small_writes(server: ServerHandle) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        # The keep-alive connection is still open on both sides.
        values = await anyio.to_thread.run_sync(_server_side_nodelay, port)
    assert values, "found no accepted connection"
    assert all(values), values


async def test_a_gzip_body_cut_before_its_trailer_is_refused(
    server: ServerHandle, http: httpx.AsyncClient, api: Api
) -> None:
    await api.create_build("steps:\n  - command: one\n")
    spec, job = await take_job(await new_agent(http, server, "a1"))
    await job.start()
    data = b"line of log\r\n" * 20
    headers = {"Authorization": f"Token {spec.token}", "Content-Encoding": "gzip"}
    url = f"/agent/v1/jobs/{spec.id}/chunks"
    params = {"sequence": 1, "offset": 0, "size": len(data)}
    corrupt = bytearray(gzip.compress(data))
    corrupt[-6] ^= 0xFF  # a wrong CRC is caught
    r = await http.post(url, params=params, content=bytes(corrupt), headers=headers)
    assert r.status_code == 400
    r = await http.post(url, params=params, content=gzip.compress(data)[:-8], headers=headers)
    assert r.status_code == 400, "a gzip stream without its trailer was taken"
