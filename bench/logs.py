"""Log throughput: a job printing MB of 100-byte lines, end to end into the server's store.

    python bench/logs.py --mb 200 [--no-pty] [--json]

The job's command is the generator

    yes '<a 99-byte log line>' | head -c <MB x 1,000,000>

(coreutils `yes` fills a large buffer with copies of the line and writes it whole: ~3 GB/s
into /dev/null on a small machine, ~30 times what the log path is asked to do). It runs on a
real `conveyor server` process (SQLite in a temporary data dir, 127.0.0.1:0) and a real
`conveyor agent start` process, separate processes so that each one's memory is its own.

The clock runs from just before the build is created to the server's `finished_at` of the job:
the agent reports `finish` only after every chunk was stored. Then the log is read back
(`GET /api/v1/jobs/{id}/log`) and must be exactly the bytes the command wrote (through the
terminal: `\\n` becomes `\\r\\n`), without gaps; the run fails loudly otherwise.

The baseline, in the same run, is the same command with nothing but a reader behind it: under
`script -q -c CMD /dev/null > /dev/null` (a PTY, read and thrown away) or, with `--no-pty`,
`sh -c 'CMD | cat > /dev/null'` (a pipe). It is measured before and after the system run;
the baseline is the mean of the two.

Memory: the peak RSS of each process is the kernel's high-water mark (`VmHWM` in
/proc/PID/status) read at the end of the run, start-up included. `VmRSS` is sampled every
0.1 s along the way and shown at 25/50/75/100 % of the command's output (the generator's bytes
written, from /proc/PID/io of its `head`), so a memory that grows with the log shows. Neither
process has children of its own: the agent's children are the job's processes, not counted.

Not a test: it measures and reports; see docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import asyncpg
import httpx
from anyio.streams.buffered import BufferedByteReceiveStream
from sqlalchemy.engine import make_url

try:
    from bench import _harness as h
except ModuleNotFoundError:  # run as `python bench/logs.py`: the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import _harness as h

from conveyor import protocol as p

MB = 1_000_000
MIB = 1024 * 1024
LINE = (
    b"2026-12-06T06:52:34.123Z INFO  [build] compiling "
    b"src/conveyor/server/agent_api.py (042 of 1000): ok\n"
)
assert len(LINE) == 100, len(LINE)
SLUG = "logs"
SAMPLE_S = 0.05
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 3.0
STOP_TIMEOUT_S = 30.0
# Where the benchmark's progress marks the memory samples.
MARKS = (25, 50, 75, 100)
_MARKER = re.compile(rb"\x1b_ct;t=\d{1,15}\x07")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/logs.py",
        description=(
            "Log throughput of a real `conveyor server` and `conveyor agent start` (separate "
            "processes, SQLite, loopback): one job prints --mb MB of 100-byte lines (`yes LINE "
            "| head -c N`), timed from build creation until the job has finished with every "
            "byte stored, against the same command under `script -q` to /dev/null (PTY) or "
            "piped to `cat > /dev/null` (--no-pty) in the same run. Reports MB/s, the ratio, "
            "and the peak RSS of the agent and the server (VmHWM), with RSS samples at 25/50/"
            "75/100 % of the log. The stored log is read back and must equal the command's "
            "output exactly."
        ),
        epilog=(
            "MB is 1,000,000 bytes of the command's output (the PTY's added \\r not counted); "
            "MiB is 1,048,576 bytes. Progress goes to stderr; with --json the last line of "
            "stdout is one JSON object with mb_per_s, raw_mb_per_s, ratio, "
            "agent_peak_rss_mib and server_peak_rss_mib (and more). Targets: PTY ratio >= "
            "0.9; --no-pty >= 100 MB/s; agent <= 60 MiB and server <= 100 MiB peak RSS."
        ),
    )
    parser.add_argument(
        "--mb", type=int, default=200, help="MB (10^6 bytes) the job prints (default 200)"
    )
    parser.add_argument(
        "--no-pty", action="store_true", help="the agent runs the job on a pipe, not a PTY"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line of stdout"
    )
    parser.add_argument(
        "--chunk-max-size",
        type=int,
        default=None,
        help="the server's --chunk-max-size in bytes (default: the server's, 1 MiB)",
    )
    parser.add_argument(
        "--postgres",
        default=None,
        metavar="URL",
        help="run the server on PostgreSQL instead of SQLite: a fresh database is created on "
        "the server of this URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres) and "
        "dropped at the end",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record py-spy profiles (raw, 100 Hz, idle excluded) of the server and the agent "
        "during the measured job into DIR/server.txt and DIR/agent.txt; needs py-spy "
        "(`pip install py-spy`), whose sampling itself takes some CPU",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="with --profile: include native frames (C code, system calls) in the profiles",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds the measured job may take (default 900)",
    )
    args = parser.parse_args(argv)
    if args.mb < 1:
        parser.error("--mb must be at least 1")
    if args.chunk_max_size is not None and args.chunk_max_size < 1:
        parser.error("--chunk-max-size must be at least 1")
    if args.profile is not None and _py_spy() is None:
        parser.error("--profile needs py-spy on PATH or next to this Python (pip install py-spy)")
    return args


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def generator(total: int) -> str:
    """The command that prints `total` bytes of 100-byte lines."""
    return f"yes {shlex.quote(LINE[:-1].decode())} | head -c {total}"


def expected_log(total: int, *, pty: bool) -> tuple[int, str]:
    """(size, sha256) of the log the command's output must become."""
    line = LINE.replace(b"\n", b"\r\n") if pty else LINE
    digest = hashlib.sha256()
    block = line * 10_000
    whole, rest = divmod(total // len(LINE), 10_000)
    for _ in range(whole):
        digest.update(block)
    digest.update(line * rest)
    return total // len(LINE) * len(line), digest.hexdigest()


# ---- the baseline -------------------------------------------------------------------------------


def baseline_argv(command: str, *, pty: bool) -> list[str]:
    if pty:
        return ["script", "-q", "-c", command, "/dev/null"]
    return ["sh", "-c", f"{command} | cat > /dev/null"]


async def timed(argv: list[str]) -> float:
    """Seconds `argv` takes, its output thrown away."""
    began = time.perf_counter()
    process = await anyio.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    async with process:
        assert process.stderr is not None
        err = b"".join([chunk async for chunk in process.stderr])
        await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({process.returncode}): {err.decode()}")
    return time.perf_counter() - began


# ---- processes and their memory -----------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in bytes (empty once it is gone)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _children() -> dict[int, list[tuple[int, str]]]:
    """Every process's children as (pid, command name), by parent pid."""
    found: dict[int, list[tuple[int, str]]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                found.setdefault(ppid, []).append((int(entry.name), comm))
    return found


def _find_below(root: int, comm: str) -> int | None:
    children = _children()
    todo = [root]
    while todo:
        for pid, name in children.get(todo.pop(), []):
            if name == comm:
                return pid
            todo.append(pid)
    return None


def _written(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return None


@dataclass
class Sample:
    at: float
    written: int  # bytes the generator wrote so far
    agent_rss: int
    server_rss: int


@dataclass
class Sampler:
    """VmRSS of both processes every SAMPLE_S, with the generator's progress."""

    agent: int
    server: int
    samples: list[Sample] = field(default_factory=list)
    _head: int | None = None
    _written: int = 0
    done_at: float | None = None
    """`time.monotonic()` of the first sample that saw the generator gone."""

    def sample(self) -> None:
        if self._head is None:
            self._head = _find_below(self.agent, "head")
        if self._head is not None:
            written = _written(self._head)
            if written is None:  # it has exited: it wrote everything
                self._head = -1
                self.done_at = time.monotonic()
            else:
                self._written = written
        self.samples.append(
            Sample(
                time.monotonic(),
                self._written,
                _status(self.agent).get("VmRSS", 0),
                _status(self.server).get("VmRSS", 0),
            )
        )

    async def run(self) -> None:
        while True:
            await anyio.to_thread.run_sync(self.sample)
            await anyio.sleep(SAMPLE_S)

    def at_marks(self, total: int) -> list[Sample]:
        """The first sample at or past each of MARKS percent of the output, the last for 100."""
        marks: list[Sample] = []
        for percent in MARKS[:-1]:
            past = [s for s in self.samples if s.written * 100 >= percent * total]
            marks.append(past[0] if past else self.samples[-1])
        marks.append(self.samples[-1])
        return marks


@asynccontextmanager
async def running(
    argv: list[str], log_path: Path, *, stdout_pipe: bool = False
) -> AsyncIterator[anyio.abc.Process]:
    """Run `argv` in a session of its own. On exit: SIGTERM; a second SIGTERM if it is still
    there after a moment (an agent stopped mid-job cancels the job then, rather than let it run
    to its end); SIGKILL to its group if it lingers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    with log_path.open("wb") as log_file:
        process = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log_file,
            stderr=log_file,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with anyio.CancelScope(shield=True):
            for wait in (STOP_GRACE_S, STOP_TIMEOUT_S):
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(wait):
                    await process.wait()
            if process.returncode is None:
                h.progress(f"{argv[3]} process {process.pid} did not stop in time: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            await process.aclose()


@dataclass(frozen=True)
class Server:
    url: str
    registration_token: str
    api_token: str


async def read_banner(
    process: anyio.abc.Process, log_path: Path
) -> tuple[Server, BufferedByteReceiveStream]:
    """The URL and tokens `conveyor server` prints at start; returns them and its stdout."""
    assert process.stdout is not None
    stdout = BufferedByteReceiveStream(process.stdout)
    found: dict[str, str] = {}
    with anyio.move_on_after(STARTUP_TIMEOUT_S):
        while "start" not in found:
            try:
                line = (await stdout.receive_until(b"\n", 64 * 1024)).decode()
            except (anyio.EndOfStream, anyio.IncompleteRead):
                break
            for key, prefix in (
                ("url", "Conveyor server listening on "),
                ("registration", "Agent registration token:"),
                ("api", "API token:"),
                ("start", "Start an agent:"),
            ):
                if line.startswith(prefix):
                    found[key] = line[len(prefix) :].strip()
    if not {"url", "registration", "api"} <= found.keys():
        raise RuntimeError(
            f"the server did not start: {log_path.read_text(errors='replace')[-2000:]}"
        )
    return Server(found["url"], found["registration"], found["api"]), stdout


async def drain(stdout: BufferedByteReceiveStream) -> None:
    """Keep reading what the server prints, so that it never blocks on a full pipe."""
    with contextlib.suppress(
        anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError
    ):
        while True:
            await stdout.receive()


@asynccontextmanager
async def profiling(
    pids: dict[str, int], out_dir: Path | None, *, native: bool = False
) -> AsyncIterator[None]:
    """py-spy recording each of `pids` into out_dir/NAME.txt, while the block runs."""
    if out_dir is None:
        yield
        return
    spy = _py_spy()
    assert spy is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    recorders = []
    for name, pid in pids.items():
        out = str(out_dir / f"{name}.txt")
        argv = [spy, "record", "--pid", str(pid), "-r", "100", "-f", "raw", "-o", out]
        if native:
            argv.append("--native")
        recorders.append(
            await anyio.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            for recorder in recorders:
                recorder.send_signal(signal.SIGINT)  # py-spy writes its profile and exits
            for recorder in recorders:
                async with recorder:
                    await recorder.wait()
        h.progress(f"profiles in {out_dir}/")


class MarkerStripper:
    """Takes the per-line timestamp markers (`ESC _ c t ; t=<ms> BEL`, see docs/logs.md) out of
    a log read in pieces. The generator's output holds no ESC, so every ESC is a marker's."""

    def __init__(self) -> None:
        self._held = b""
        self.removed = 0

    def feed(self, data: bytes) -> bytes:
        buf = self._held + data
        start = buf.rfind(b"\x1b")
        if start != -1 and b"\x07" not in buf[start:]:
            buf, self._held = buf[:start], buf[start:]  # a marker cut in two: wait for the rest
        else:
            self._held = b""
        out = _MARKER.sub(b"", buf) if b"\x1b" in buf else buf
        self.removed += len(buf) - len(out)
        return out

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


@asynccontextmanager
async def scratch_database(admin_url: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database on the server of `admin_url`; dropped on exit."""
    admin = make_url(admin_url)
    name = f"conveyor_bench_{uuid.uuid4().hex[:12]}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(
            host=admin.host, port=admin.port, user=admin.username, database=admin.database,
            password=admin.password,
        )  # fmt: skip
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with anyio.CancelScope(shield=True):
            await execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- the REST API -------------------------------------------------------------------------------


class Api:
    def __init__(self, server: Server) -> None:
        self.http = httpx.AsyncClient(
            base_url=server.url,
            headers={"Authorization": f"Token {server.api_token}"},
            timeout=httpx.Timeout(60.0),
        )

    async def create_build(self, command: str) -> p.BuildOut:
        pipeline = json.dumps({"steps": [{"label": "log", "command": command}]})
        r = await self.http.post(f"/api/v1/pipelines/{SLUG}/builds", json={"pipeline": pipeline})
        if r.status_code != 201:
            raise RuntimeError(f"creating a build failed: {r.status_code} {r.text}")
        return p.BuildOut.model_validate(r.json())

    async def finished(self, build: p.BuildOut, timeout: float) -> p.JobOut:
        """The build's job once the build has ended (long polls: the server answers on change)."""
        with anyio.fail_after(timeout):
            while not build.state.terminal:
                r = await self.http.get(
                    f"/api/v1/pipelines/{build.pipeline}/builds/{build.number}",
                    params={"wait": 30, "after": build.version},
                )
                if r.status_code != 200:
                    raise RuntimeError(f"reading the build failed: {r.status_code} {r.text}")
                build = p.BuildOut.model_validate(r.json())
        (job,) = build.jobs
        return job

    async def log_digest(self, job_id: str) -> tuple[int, str, int, int]:
        """(size, sha256, gaps, marker bytes) of the job's log as `GET /api/v1/jobs/{id}/log`
        serves it, per-line timestamp markers taken out if it still holds any."""
        digest = hashlib.sha256()
        size = 0
        markers = MarkerStripper()
        async with self.http.stream("GET", f"/api/v1/jobs/{job_id}/log") as r:
            if r.status_code != 200:
                raise RuntimeError(f"reading the log failed: {r.status_code}")
            gaps = int(r.headers.get("X-Conveyor-Log-Gaps", "0"))
            async for piece in r.aiter_bytes():
                piece = markers.feed(piece)
                digest.update(piece)
                size += len(piece)
        rest = markers.flush()
        digest.update(rest)
        return size + len(rest), digest.hexdigest(), gaps, markers.removed

    async def first_bytes(self, job_id: str, n: int = 300) -> bytes:
        async with self.http.stream("GET", f"/api/v1/jobs/{job_id}/log") as r:
            async for piece in r.aiter_bytes():
                return piece[:n]
        return b""

    async def aclose(self) -> None:
        await self.http.aclose()


# ---- the run ------------------------------------------------------------------------------------


@dataclass
class SystemRun:
    seconds: float
    to_start_s: float
    output_s: float | None  # when the generator had written everything (sampled)
    stored_size: int  # the job's log_size: the output, and markers if the agent adds them
    log_size: int  # the command's output as the log holds it (PTY: \r\n)
    agent_hwm: int
    server_hwm: int
    agent_cpu_s: float
    server_cpu_s: float
    idle: Sample  # before the job
    marks: list[Sample]
    samples: int


async def system(args: argparse.Namespace, total: int) -> SystemRun:
    pty = not args.no_pty
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-bench-logs-")))
        server_argv = [
            sys.executable, "-m", "conveyor", "server", "--listen", "127.0.0.1:0",
            "--data-dir", str(tmp / "server"), "--log-level", "warning",
        ]  # fmt: skip
        if args.chunk_max_size is not None:
            server_argv += ["--chunk-max-size", str(args.chunk_max_size)]
        if args.postgres is not None:
            url = await stack.enter_async_context(scratch_database(args.postgres))
            server_argv += ["--database-url", url]
        async with (
            running(server_argv, tmp / "server.log", stdout_pipe=True) as server_proc,
            anyio.create_task_group() as tg,
        ):
            server, stdout = await read_banner(server_proc, tmp / "server.log")
            tg.start_soon(drain, stdout)
            agent_argv = [
                sys.executable, "-m", "conveyor", "agent", "start", "--endpoint", server.url,
                "--token", server.registration_token, "--name", "bench-logs",
                "--build-path", str(tmp / "builds"), "--ping-mode", "stream-only",
            ]  # fmt: skip
            if not pty:
                agent_argv.append("--no-pty")
            api = Api(server)
            try:
                async with running(agent_argv, tmp / "agent.log") as agent_proc:
                    h.progress(f"server {server.url} (pid {server_proc.pid}), agent pid "
                               f"{agent_proc.pid}; warm-up job")  # fmt: skip
                    # Finishes once the agent is connected: readiness and warm-up in one.
                    warm = await api.finished(await api.create_build("true"), STARTUP_TIMEOUT_S)
                    if not warm.passed:
                        raise RuntimeError(
                            f"the warm-up job failed: {(tmp / 'agent.log').read_text()[-2000:]}"
                        )
                    run = await measured(args, api, total, server_proc.pid, agent_proc.pid)
                    if agent_proc.returncode is not None:
                        raise RuntimeError("the agent process exited during the run")
            finally:
                await api.aclose()
            tg.cancel_scope.cancel()
    return run


async def measured(
    args: argparse.Namespace, api: Api, total: int, server_pid: int, agent_pid: int
) -> SystemRun:
    pty = not args.no_pty
    sampler = Sampler(agent=agent_pid, server=server_pid)
    cpu_before = _cpu_seconds(agent_pid), _cpu_seconds(server_pid)
    h.progress(f"running `{generator(total)}` ({'PTY' if pty else 'pipe'})")
    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler.run)
        async with profiling(
            {"server": server_pid, "agent": agent_pid}, args.profile, native=args.native
        ):
            began, began_mono = datetime.now(UTC), time.monotonic()
            build = await api.create_build(generator(total))
            job = await api.finished(build, args.timeout)
        await anyio.to_thread.run_sync(sampler.sample)
        tg.cancel_scope.cancel()
    cpu = _cpu_seconds(agent_pid) - cpu_before[0], _cpu_seconds(server_pid) - cpu_before[1]
    agent_hwm = _status(agent_pid).get("VmHWM", 0)
    server_hwm = _status(server_pid).get("VmHWM", 0)
    if job.finished_at is None or job.started_at is None or not job.passed:
        raise RuntimeError(
            f"the job did not pass: {job.state} exit {job.exit_status}, {job.signal_reason}"
        )
    seconds = (job.finished_at - began).total_seconds()
    h.progress(f"job done in {seconds:.2f}s; reading the log back")
    want_size, want_digest = await anyio.to_thread.run_sync(lambda: expected_log(total, pty=pty))
    size, digest, gaps, markers = await api.log_digest(job.id)
    if job.chunks_failed_count or gaps:
        raise RuntimeError(
            f"log incomplete: {job.chunks_failed_count} chunks failed, {gaps} gaps in the log"
        )
    if (size, digest) != (want_size, want_digest) or job.log_size < want_size:
        head = await api.first_bytes(job.id)
        raise RuntimeError(
            f"the stored log is not the command's output: {size} bytes read back, "
            f"{markers} bytes of markers taken out, {job.log_size} stored, {want_size} "
            f"expected; same bytes: "
            f"{digest == want_digest}; it begins with {head!r}"
        )
    return SystemRun(
        seconds=seconds,
        to_start_s=(job.started_at - began).total_seconds(),
        output_s=None if sampler.done_at is None else sampler.done_at - began_mono,
        stored_size=job.log_size,
        log_size=want_size,
        agent_hwm=agent_hwm,
        server_hwm=server_hwm,
        agent_cpu_s=cpu[0],
        server_cpu_s=cpu[1],
        idle=sampler.samples[0],
        marks=sampler.at_marks(total),
        samples=len(sampler.samples),
    )


@dataclass
class Results:
    generator_s: float
    before_s: float
    after_s: float
    run: SystemRun


async def measure(args: argparse.Namespace) -> Results:
    total = args.mb * MB
    command = generator(total)
    pty = not args.no_pty
    generator_s = await timed(["sh", "-c", f"{command} > /dev/null"])
    h.progress(f"generator alone: {total / MB / generator_s:.0f} MB/s")
    before = await timed(baseline_argv(command, pty=pty))
    h.progress(f"baseline before: {total / MB / before:.1f} MB/s")
    run = await system(args, total)
    h.progress(f"system: {total / MB / run.seconds:.1f} MB/s")
    after = await timed(baseline_argv(command, pty=pty))
    h.progress(f"baseline after: {total / MB / after:.1f} MB/s")
    return Results(generator_s, before, after, run)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    total = args.mb * MB
    pty = not args.no_pty
    load_before = h.load_average()
    r = h.run(measure, args)
    run = r.run
    mb = total / MB
    mb_per_s = mb / run.seconds
    raw_before, raw_after = mb / r.before_s, mb / r.after_s
    raw = (raw_before + raw_after) / 2
    ratio = mb_per_s / raw
    agent_mib, server_mib = run.agent_hwm / MIB, run.server_hwm / MIB
    m = h.machine()
    baseline = (
        "`script -q -c CMD /dev/null > /dev/null`" if pty else "`sh -c 'CMD | cat > /dev/null'`"
    )
    print(f"machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}")
    print(f"load average before / after: {load_before} / {h.load_average()}")
    print(f"log throughput: {args.mb} MB of 100-byte lines, {'PTY' if pty else '--no-pty'}")
    print(f"  command:   {generator(total)}  (alone: {mb / r.generator_s:.0f} MB/s)")
    print(
        f"  system:    {mb_per_s:8.1f} MB/s  ({run.seconds:.2f}s from build creation to the "
        f"job's finish; its start after {run.to_start_s:.2f}s"
        + ("" if run.output_s is None else f", all output written after {run.output_s:.2f}s")
        + ")"
    )
    print(
        f"  baseline:  {raw:8.1f} MB/s  ({baseline}; {raw_before:.1f} before, "
        f"{raw_after:.1f} after)"
    )
    print(f"  ratio:     {ratio:8.3f}")
    print(
        f"  stored:    {run.stored_size} bytes ({run.stored_size - run.log_size} of them "
        "timestamp markers); the log read back is the command's output, byte for byte, "
        "without gaps"
    )
    print(
        f"  CPU:       agent {run.agent_cpu_s:.2f}s, server {run.server_cpu_s:.2f}s "
        f"({run.agent_cpu_s / mb * 1000:.1f} / {run.server_cpu_s / mb * 1000:.1f} ms per MB)"
    )
    print(f"  peak RSS (VmHWM): agent {agent_mib:.1f} MiB, server {server_mib:.1f} MiB")
    print("  RSS (VmRSS) as the log grows:")
    idle = run.idle
    print(
        f"    before the job:     agent {idle.agent_rss / MIB:6.1f} MiB, "
        f"server {idle.server_rss / MIB:6.1f} MiB"
    )
    for percent, s in zip(MARKS, run.marks, strict=True):
        print(
            f"    {percent:3d} % of the output: agent {s.agent_rss / MIB:6.1f} MiB, "
            f"server {s.server_rss / MIB:6.1f} MiB"
        )
    targets = [
        ("PTY ratio >= 0.9", ratio >= 0.9) if pty else ("--no-pty >= 100 MB/s", mb_per_s >= 100),
        ("agent <= 60 MiB", agent_mib <= 60),
        ("server <= 100 MiB", server_mib <= 100),
    ]
    print("  targets:   " + "; ".join(f"{t}: {'met' if ok else 'NOT met'}" for t, ok in targets))
    if args.json:
        print(
            json.dumps(
                {
                    "mb": args.mb,
                    "pty": pty,
                    "mb_per_s": round(mb_per_s, 2),
                    "raw_mb_per_s": round(raw, 2),
                    "ratio": round(ratio, 4),
                    "agent_peak_rss_mib": round(agent_mib, 1),
                    "server_peak_rss_mib": round(server_mib, 1),
                    "agent_rss_mib_at": [round(s.agent_rss / MIB, 1) for s in [idle, *run.marks]],
                    "server_rss_mib_at": [round(s.server_rss / MIB, 1) for s in [idle, *run.marks]],
                    "agent_cpu_s": round(run.agent_cpu_s, 2),
                    "server_cpu_s": round(run.server_cpu_s, 2),
                    "seconds": round(run.seconds, 3),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
