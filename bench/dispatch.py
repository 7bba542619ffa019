"""Dispatch latency: from the moment a job becomes runnable to its command's first instruction.

    python bench/dispatch.py --agents 100 --jobs 200 --mode stream [--json]

A real server (in this process, SQLite in a temporary directory, 127.0.0.1:0) and N idle
agents. Jobs are made runnable one at a time: a one-step build is created, the benchmark waits
until its job has finished, then creates the next. Each job's command is

    echo T=$EPOCHREALTIME

($EPOCHREALTIME is a bash builtin variable: no exec, the very first thing the shell does), and
the latency of a job is T minus the server's `runnable_at` for that job (set in the transaction
that schedules it). Both are wall-clock times of this one machine.

Not a test: it measures and reports; see docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    from bench import _harness as h
except ModuleNotFoundError:  # run as `python bench/dispatch.py`: the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import _harness as h

from conveyor import protocol as p
from conveyor.server.service import ServerHandle

COMMAND = "echo T=$EPOCHREALTIME"
# `$$` in a pipeline leaves one `$` for the shell (a single `$` is interpolated at creation).
PIPELINE = f'steps:\n  - label: latency\n    command: "{COMMAND.replace("$", "$$")}"\n'
_STAMP = re.compile(rb"T=(\d+)[.,](\d+)")


@dataclass(frozen=True)
class Sample:
    latency_ms: float  # runnable_at -> first instruction
    to_started_ms: float  # runnable_at -> the agent's `start` call (its own started_at)
    job_ms: float  # runnable_at -> finished_at (the agent's finish call)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/dispatch.py",
        description=(
            "Dispatch latency of a real Conveyor server and N idle agents: for M jobs made "
            "runnable one after the other, the time from the job's `runnable_at` (server) to "
            "the first instruction of its command (`echo T=$EPOCHREALTIME`, read back from the "
            "job log). Reports p50/p90/p99/max in milliseconds."
        ),
        epilog=(
            "Mode `stream`: agents run --ping-mode stream-only and get jobs pushed on their "
            "stream. Mode `ping`: agents run --ping-mode ping-only and poll at the server's "
            "ping interval plus jitter in [0, interval); the production default of 10 s would "
            "make a run take very long, so the server's interval is --ping-interval (default "
            "2 s, the smallest an agent accepts). Agents run in this process unless "
            "--agent-processes is given. Progress goes to stderr; with --json the last line of "
            "stdout is one JSON object."
        ),
    )
    parser.add_argument("--agents", type=int, required=True, help="idle agent workers (N)")
    parser.add_argument("--jobs", type=int, required=True, help="jobs measured (M)")
    parser.add_argument(
        "--mode",
        choices=["stream", "ping"],
        required=True,
        help="stream: jobs pushed on the agents' streams; ping: agents poll for jobs",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line of stdout"
    )
    parser.add_argument(
        "--ping-interval",
        type=int,
        default=2,
        help="the server's ping interval in seconds, used by agents in ping mode (default 2; "
        "production default 10)",
    )
    parser.add_argument(
        "--agent-processes",
        type=int,
        default=0,
        help="run the agents as this many `conveyor agent start` processes instead of in this "
        "process (default 0: in-process AgentPools)",
    )
    parser.add_argument(
        "--workers-per-pool",
        type=int,
        default=h.DEFAULT_WORKERS_PER_POOL,
        help="in-process: at most this many workers per AgentPool (default %(default)s)",
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="jobs run first and not counted (default 5)"
    )
    parser.add_argument(
        "--job-timeout", type=float, default=60.0, help="seconds one job may take (default 60)"
    )
    args = parser.parse_args(argv)
    if args.agents < 1 or args.jobs < 1 or args.warmup < 0:
        parser.error("--agents and --jobs must be at least 1, --warmup at least 0")
    if not 2 <= args.ping_interval <= 3600:
        parser.error("--ping-interval must be between 2 and 3600 seconds")
    if args.agent_processes < 0 or args.workers_per_pool < 1:
        parser.error("--agent-processes must be ≥ 0 and --workers-per-pool ≥ 1")
    return args


def first_instruction(log: bytes) -> float:
    match = _STAMP.search(log)
    if match is None:
        raise RuntimeError(f"no T=<epoch> stamp in the job log: {log[:200]!r}")
    return float(match.group(1) + b"." + match.group(2))


async def run_one(server: ServerHandle, api: h.Api, timeout: float) -> Sample:
    # After the build is created it changes twice: the job starts, the job finishes.
    build = await api.create_build(PIPELINE)
    job = await h.wait_quietly(server, api, build, changes=2, timeout=timeout)
    if job.state != p.JobState.FINISHED or job.exit_status != 0:
        raise RuntimeError(f"job {job.id} ended {job.state.value} with {job.exit_status}")
    assert job.runnable_at is not None and job.started_at is not None
    assert job.finished_at is not None
    runnable = job.runnable_at.timestamp()
    stamp = first_instruction(await api.log(job.id))
    return Sample(
        latency_ms=(stamp - runnable) * 1000,
        to_started_ms=(job.started_at.timestamp() - runnable) * 1000,
        job_ms=(job.finished_at.timestamp() - runnable) * 1000,
    )


async def measure(args: argparse.Namespace) -> list[Sample]:
    mode: p.PingMode = "stream-only" if args.mode == "stream" else "ping-only"
    plan = h.AgentPlan(
        count=args.agents,
        ping_mode=mode,
        processes=args.agent_processes,
        workers_per_pool=args.workers_per_pool,
    )
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp_name:
        tmp = Path(tmp_name)
        async with h.running_server(tmp / "server", ping_interval=args.ping_interval) as server:
            h.progress(f"server at {server.url}; starting {plan.describe()}")
            started = time.monotonic()
            async with (
                h.running_agents(server, tmp / "builds", plan, tmp) as _,
                h.Api(server) as api,
            ):
                h.progress(f"agents ready in {time.monotonic() - started:.1f}s")
                samples: list[Sample] = []
                total = args.warmup + args.jobs
                began = time.monotonic()
                for i in range(total):
                    sample = await run_one(server, api, args.job_timeout)
                    if i >= args.warmup:
                        samples.append(sample)
                    if (i + 1) % 25 == 0 or i + 1 == total:
                        h.progress(
                            f"{i + 1}/{total} jobs ({time.monotonic() - began:.1f}s), "
                            f"last {sample.latency_ms:.1f} ms"
                        )
                h.progress("stopping agents and server")
            return samples


def report(args: argparse.Namespace, samples: list[Sample], load: str) -> dict[str, object]:
    lat = sorted(s.latency_ms for s in samples)
    started = sorted(s.to_started_ms for s in samples)
    spawn = sorted(s.latency_ms - s.to_started_ms for s in samples)
    whole = sorted(s.job_ms for s in samples)
    result: dict[str, object] = {
        "agents": args.agents,
        "jobs": len(samples),
        "mode": args.mode,
        "p50_ms": round(h.percentile(lat, 50), 2),
        "p90_ms": round(h.percentile(lat, 90), 2),
        "p99_ms": round(h.percentile(lat, 99), 2),
        "max_ms": round(lat[-1], 2),
    }
    m = h.machine()
    print(f"machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}")
    print(f"load average before / after: {load} / {h.load_average()}")
    agents_where = (
        f"{args.agent_processes} agent processes" if args.agent_processes else "in-process agents"
    )
    ping = f", ping interval {args.ping_interval}s" if args.mode == "ping" else ""
    print(
        f"dispatch latency, mode {args.mode}{ping}: {args.agents} agents ({agents_where}), "
        f"{len(samples)} jobs (+{args.warmup} warm-up), one at a time"
    )
    print("  runnable_at -> first instruction of the command (ms):")
    for name, values in (
        ("latency", lat),
        ("  of which runnable -> agent's start call", started),
        ("  of which start call -> first instruction", spawn),
        ("runnable -> finish call (whole job)", whole),
    ):
        print(
            f"    {name:<44} p50 {h.percentile(values, 50):8.2f}  "
            f"p90 {h.percentile(values, 90):8.2f}  p99 {h.percentile(values, 99):8.2f}  "
            f"max {values[-1]:8.2f}"
        )
    if args.mode == "stream" and args.agents == 100:
        met = h.percentile(lat, 50) <= 5 and h.percentile(lat, 99) <= 20
        verdict = "met" if met else "NOT met"
        print(f"  target (100 agents, stream: p50 <= 5 ms, p99 <= 20 ms): {verdict}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    h.quiet_logging()
    load = h.load_average()
    samples = h.run(measure, args)
    result = report(args, samples, load)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
