"""Throughput: `true` jobs per second through the whole system, against bare process spawns.

    python bench/throughput.py --agents 4 --jobs 500 [--json]

The baseline is measured in the same run: `--agents` concurrent spawners run `bash -c true`
until M processes have run (asyncio subprocesses, like the agent's, without PTY, server or
HTTP). It is measured before and after the system run, and the mean of the two is the
baseline, so a change in the machine's load during the run shows.

The system run: a real server (in this process, SQLite in a temporary directory, 127.0.0.1:0),
`--agents` streaming agent workers, and M jobs whose command is `true`. With `--shape builds`
(the default) they are M one-step builds, created by `--agents` concurrent REST clients as fast
as the server takes them; with `--shape steps` they are the M parallel steps of one build, and
with `--shape parallelism` the M jobs of one step (`parallelism: M`). The
clock runs from just before the first build is created to the server's `finished_at` of the
last build, so the benchmark's way of noticing the end does not count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio

try:
    from bench import _harness as h
except ModuleNotFoundError:  # run as `python bench/throughput.py`: the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import _harness as h

from conveyor import protocol as p
from conveyor.server.service import ServerHandle

STEP = '  - command: "true"\n'
SLUG = "throughput"
# A build whose change we missed (it came before we listened) is waited for this long at most.
QUIET_S = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description=(
            "Jobs per second for `true` jobs through a real Conveyor server and N streaming "
            "agents, against a bare `bash -c true` spawn loop with N concurrent spawners "
            "measured in the same run. Reports jobs/s, spawns/s and their ratio."
        ),
        epilog=(
            "--shape builds (default): M one-step builds, created by N concurrent REST "
            "clients. --shape steps: one build of M parallel steps. --shape parallelism: one "
            "step with parallelism M. Agents run in this process "
            "unless --agent-processes is given. Progress goes to stderr; with --json the last "
            "line of stdout is one JSON object."
        ),
    )
    parser.add_argument("--agents", type=int, default=4, help="agent workers (default 4)")
    parser.add_argument("--jobs", type=int, default=500, help="jobs (default 500)")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line of stdout"
    )
    parser.add_argument(
        "--shape",
        choices=["builds", "steps", "parallelism"],
        default="builds",
        help="builds: M one-step builds (default); steps: one build of M parallel steps",
    )
    parser.add_argument(
        "--agent-processes",
        type=int,
        default=0,
        help="run the agents as this many `conveyor agent start` processes instead of in this "
        "process (default 0: in-process AgentPools)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds the system run may take in all (default 900)",
    )
    args = parser.parse_args(argv)
    if args.agents < 1 or args.jobs < 1:
        parser.error("--agents and --jobs must be at least 1")
    if args.agent_processes < 0:
        parser.error("--agent-processes must be ≥ 0")
    return args


# ---- the baseline -------------------------------------------------------------------------------


async def spawn_loop(spawners: int, total: int) -> float:
    """Processes per second: `spawners` tasks each running `bash -c true` until `total` ran."""
    remaining = total

    async def spawner() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            process = await anyio.open_process(
                ["bash", "-c", "true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            async with process:
                await process.wait()

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(spawners):
            tg.start_soon(spawner)
    return total / (time.perf_counter() - began)


# ---- the system ---------------------------------------------------------------------------------


async def create_and_follow(
    server: ServerHandle, api: h.Api, count: int, creators: int
) -> list[p.BuildOut]:
    """Create `count` one-step builds with `creators` concurrent clients; return once each has
    changed twice (its job started, then finished), or stayed quiet for a while.

    Nothing is read meanwhile: changes are seen on the in-process server's notifier, which
    costs the server nothing. The caller reads the builds afterwards.
    """
    builds: list[p.BuildOut] = []
    remaining = count

    async def follow(build: p.BuildOut) -> None:
        for _ in range(2):
            changed = server.ctx.notifier.subscribe(f"build:{build.id}")
            with anyio.move_on_after(QUIET_S):
                await changed.wait()

    async with anyio.create_task_group() as followers:

        async def creator() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                build = await api.create_build("steps:\n" + STEP, SLUG)
                builds.append(build)
                followers.start_soon(follow, build)

        async with anyio.create_task_group() as tg:
            for _ in range(creators):
                tg.start_soon(creator)
        h.progress(f"{count} builds created; waiting for their jobs")
    return builds


async def one_build(api: h.Api, count: int, *, one_step: bool) -> list[p.BuildOut]:
    """One build of `count` parallel steps, or of one step of `count` parallel jobs; returns
    once it has ended (read once a second)."""
    if one_step:
        text = f'steps:\n  - command: "true"\n    parallelism: {count}\n'
    else:
        text = "steps:\n" + STEP * count
    build = await api.create_build(text, SLUG)
    h.progress(f"a build of {count} steps created; waiting for its jobs")
    while not build.state.terminal:
        await anyio.sleep(1.0)
        build = await api.get_build(build, wait=30)
        h.progress(f"{sum(j.state.terminal for j in build.jobs)}/{count} jobs done")
    return [build]


async def settled(api: h.Api, build: p.BuildOut) -> p.BuildOut:
    while not build.state.terminal:
        build = await api.get_build(build, wait=30)
    return build


async def system(args: argparse.Namespace) -> tuple[float, float, int]:
    """(jobs/s, seconds until every build was created, jobs that did not pass)."""
    plan = h.AgentPlan(count=args.agents, ping_mode="stream-only", processes=args.agent_processes)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp_name:
        tmp = Path(tmp_name)
        async with h.running_server(tmp / "server", ping_interval=10) as server:
            h.progress(f"server at {server.url}; starting {plan.describe()}")
            async with (
                h.running_agents(server, tmp / "builds", plan, tmp) as _,
                h.Api(server) as api,
            ):
                with anyio.fail_after(args.timeout):
                    # A warm-up build: first-request costs (imports, caches) stay out.
                    await settled(api, await api.create_build("steps:\n" + STEP * args.agents))
                    h.progress(f"running {args.jobs} jobs ({args.shape})")
                    began = datetime.now(UTC)
                    if args.shape == "builds":
                        builds = await create_and_follow(server, api, args.jobs, args.agents)
                    else:
                        one_step = args.shape == "parallelism"
                        builds = await one_build(api, args.jobs, one_step=one_step)
                    done = [await settled(api, b) for b in builds]
                finished = max(b.finished_at for b in done if b.finished_at is not None)
                created = max(b.created_at for b in done)
                failed = sum(1 for b in done for j in b.jobs if not j.passed)
                elapsed = (finished - began).total_seconds()
                created_s = (created - began).total_seconds()
                h.progress("stopping agents and server")
    return args.jobs / elapsed, created_s, failed


async def measure(args: argparse.Namespace) -> dict[str, float]:
    h.progress(f"baseline: {args.agents} spawners x `bash -c true`, {args.jobs} processes")
    before = await spawn_loop(args.agents, args.jobs)
    h.progress(f"baseline before: {before:.1f}/s")
    jobs_per_s, created_s, failed = await system(args)
    h.progress(f"system: {jobs_per_s:.1f} jobs/s")
    after = await spawn_loop(args.agents, args.jobs)
    h.progress(f"baseline after: {after:.1f}/s")
    return {
        "before": before,
        "after": after,
        "jobs_per_s": jobs_per_s,
        "created_s": created_s,
        "failed": failed,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    h.quiet_logging()
    load_before = h.load_average()
    r = h.run(measure, args)
    spawn_per_s = (r["before"] + r["after"]) / 2
    ratio = r["jobs_per_s"] / spawn_per_s
    m = h.machine()
    print(f"machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}")
    print(f"load average before / after: {load_before} / {h.load_average()}")
    where = (
        f"{args.agent_processes} agent processes" if args.agent_processes else "in-process agents"
    )
    shape = {
        "builds": "one-step builds",
        "steps": "parallel steps of one build",
        "parallelism": "the parallel jobs of one step",
    }[args.shape]
    print(f"throughput: {args.jobs} `true` jobs as {shape}, {args.agents} agents ({where})")
    print(
        f"  system:   {r['jobs_per_s']:8.1f} jobs/s"
        + (f"   (creating the builds took {r['created_s']:.1f}s)" if args.shape == "builds" else "")
    )
    print(
        f"  baseline: {spawn_per_s:8.1f} spawns/s  ({args.agents} concurrent `bash -c true` "
        f"loops; {r['before']:.1f} before, {r['after']:.1f} after)"
    )
    print(f"  ratio:    {ratio:8.3f}   target >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'}")
    if r["failed"]:
        print(f"  WARNING: {int(r['failed'])} jobs did not pass")
    if args.json:
        print(
            json.dumps(
                {
                    "agents": args.agents,
                    "jobs": args.jobs,
                    "shape": args.shape,
                    "jobs_per_s": round(r["jobs_per_s"], 2),
                    "spawn_per_s": round(spawn_per_s, 2),
                    "ratio": round(ratio, 4),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
