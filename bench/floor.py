"""The floor under dispatch latency and throughput: what the agent protocol's parts cost on
this machine before any of the server's work.

    python bench/floor.py [--requests 500] [--spawns 300] [--workers 4] [--jobs 500] [--json]

Nothing of Conveyor's server runs here. A minimal FastAPI app under uvicorn (as the server
runs it, in a process of its own) answers empty calls, and the client is httpx, as the
agent's. Measured:

- `rtt`: one small JSON POST answered with 204 over a kept-alive loopback connection: what the
  agent's `start` call costs at the least.
- `push`: a line the server writes on a streaming response, from its write to the client
  having read it (both read the same clock): what a `job_assigned` push costs at the least.
- `spawn`: from just before the agent's own spawn (`conveyor.runner.process.run_process`, a
  PTY, a session of its own) to bash's first instruction (`echo T=$EPOCHREALTIME`).
- `jobs`: `--workers` loops each doing a job's calls (start, its log if any, finish) around a
  `bash -e -c true` in a PTY, against `--workers` bare `bash -c true` spawn loops (the
  throughput benchmark's baseline): the most a server could give whose calls cost nothing.
  The same loops without the calls show what the spawn path alone gives.

`push + rtt + spawn` (p50s) is the least a job can take from runnable to its first
instruction with the start confirmed before the command runs; `jobs / spawns` is the
highest throughput ratio possible with these parts on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import httpx

try:
    from bench import _harness as h
    from bench.throughput import spawn_loop
except ModuleNotFoundError:  # run as `python bench/floor.py`: the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import _harness as h
    from bench.throughput import spawn_loop

from conveyor.runner.process import run_process

PUSH_EVERY_S = 0.01


# ---- the minimal server (run in its own process: `--serve`) --------------------------------


def serve() -> None:
    import asyncio

    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.post("/call", status_code=204)
    async def call(body: dict[str, object]) -> None:
        return None

    @app.get("/stream")
    async def stream(count: int) -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            for _ in range(count):
                await asyncio.sleep(PUSH_EVERY_S)
                yield f'{{"t": {time.time()!r}}}\n'.encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)  # before the port is told: the first call must find it listening
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


# ---- the measures ------------------------------------------------------------------------------


async def rtt(client: httpx.AsyncClient, count: int) -> list[float]:
    body = {"started_at": "2026-01-01T00:00:00Z"}
    for _ in range(20):  # warm-up: the connection, the first-call costs
        await client.post("/call", json=body)
    times = []
    for _ in range(count):
        began = time.perf_counter()
        response = await client.post("/call", json=body)
        times.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
    return times


async def push(client: httpx.AsyncClient, count: int) -> list[float]:
    times = []
    async with client.stream("GET", "/stream", params={"count": count + 5}) as response:
        async for line in response.aiter_lines():
            times.append((time.time() - json.loads(line)["t"]) * 1000)
    return times[5:]


async def spawn(count: int, workdir: Path) -> list[float]:
    times = []
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for _ in range(count):
        out = bytearray()

        async def collect(data: bytes, out: bytearray = out) -> None:
            out.extend(data)

        began = time.time()
        await run_process(
            ["/bin/bash", "-e", "-c", "echo T=$EPOCHREALTIME"],
            env=env,
            cwd=workdir,
            on_output=collect,
        )
        first = float(out.decode().split("T=", 1)[1].split()[0])
        times.append((first - began) * 1000)
    return times


async def jobs(client: httpx.AsyncClient | None, workers: int, total: int, workdir: Path) -> float:
    """Jobs per second of `workers` loops; with no client, the spawns alone (no calls)."""
    remaining = total
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            if client is not None:
                started = {"started_at": "2026-01-01T00:00:00Z"}
                (await client.post("/call", json=started)).raise_for_status()
            out = bytearray()

            async def collect(data: bytes, out: bytearray = out) -> None:
                out.extend(data)

            result = await run_process(
                ["/bin/bash", "-e", "-c", "true"], env=env, cwd=workdir, on_output=collect
            )
            if client is None:
                continue
            if out:  # as the agent: no output, no chunk (`true` prints nothing)
                chunk = {"sequence": 1, "data": out.decode()}
                (await client.post("/call", json=chunk)).raise_for_status()
            (await client.post("/call", json={"exit_status": result.status})).raise_for_status()

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
    return total / (time.perf_counter() - began)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(h.percentile(ordered, 50), 3),
        "p99": round(h.percentile(ordered, 99), 3),
    }


async def measure(args: argparse.Namespace) -> dict[str, object]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        endpoint = f"http://127.0.0.1:{port}"
        result: dict[str, object] = {}
        async with httpx.AsyncClient(base_url=endpoint, timeout=30) as client:
            h.progress(f"rtt: {args.requests} calls")
            result["rtt_ms"] = summary(await rtt(client, args.requests))
            h.progress(f"push: {args.requests} lines")
            result["push_ms"] = summary(await push(client, args.requests))
            with tempfile.TemporaryDirectory(prefix="conveyor-floor-") as tmp:
                workdir = Path(tmp)
                h.progress(f"spawn: {args.spawns} processes")
                result["spawn_ms"] = summary(await spawn(args.spawns, workdir))
                h.progress(f"baseline: {args.workers} spawners, {args.jobs} processes")
                before = await spawn_loop(args.workers, args.jobs)
                h.progress(f"spawns alone: {args.workers} workers, {args.jobs} jobs")
                runs_per_s = await jobs(None, args.workers, args.jobs, workdir)
                h.progress(f"jobs: {args.workers} workers, {args.jobs} jobs")
                jobs_per_s = await jobs(client, args.workers, args.jobs, workdir)
                after = await spawn_loop(args.workers, args.jobs)
        spawns = (before + after) / 2
        result.update(
            runs_per_s=round(runs_per_s, 2),
            jobs_per_s=round(jobs_per_s, 2),
            spawn_per_s=round(spawns, 2),
            ratio=round(jobs_per_s / spawns, 4),
        )
        return result
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/floor.py",
        description=(
            "What the agent protocol's parts cost on this machine with no server logic: a "
            "call's round trip, a pushed line, a PTY spawn to bash's first instruction, and "
            "the jobs/s of empty calls around `true` against a bare spawn loop."
        ),
    )
    parser.add_argument("--requests", type=int, default=500, help="calls and pushes timed")
    parser.add_argument("--spawns", type=int, default=300, help="spawns timed")
    parser.add_argument("--workers", type=int, default=4, help="concurrent job loops")
    parser.add_argument("--jobs", type=int, default=500, help="jobs (and baseline spawns)")
    parser.add_argument("--json", action="store_true", help="one JSON object, last line")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    h.quiet_logging()
    r = h.run(measure, args)
    m = h.machine()
    print(f"machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}")
    for key, what in (
        ("rtt_ms", "call round trip"),
        ("push_ms", "pushed line"),
        ("spawn_ms", "spawn to first instruction"),
    ):
        v = r[key]
        assert isinstance(v, dict)
        print(f"  {what:28} p50 {v['p50']:7.2f} ms   p99 {v['p99']:7.2f} ms")
    floor = sum(r[k]["p50"] for k in ("rtt_ms", "push_ms", "spawn_ms"))  # type: ignore[index]
    print(f"  latency floor (sum of p50s): {floor:.2f} ms")
    print(f"  bare spawn loop: {r['spawn_per_s']} spawns/s")
    print(f"  the agent's spawns alone (PTY, no calls): {r['runs_per_s']} jobs/s")
    print(f"  jobs of empty calls: {r['jobs_per_s']} jobs/s: ratio {r['ratio']}")
    if args.json:
        print(json.dumps({**r, "latency_floor_ms": round(floor, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
