"""`conveyor run`: an embedded server and local agents in one task group, for one build.

The server (SQLite in a temporary or given data dir, on a loopback port) and the agents are the
same code that runs apart in production; jobs run in the working tree itself, and every local
agent may run every step, whatever its `agents:` rules say.

Every step kind works: a trigger step builds the pipeline file named for its slug (`--trigger
SLUG=FILE`, else `SLUG.yml` beside the pipeline file); when the build is blocked, block and
input steps are unblocked with `--unblock` (field values from `--field`, else their defaults),
or by answering prompts on a terminal. `conveyor pipeline upload` inside a job adds steps.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import anyio
import anyio.to_thread
import httpx
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from conveyor import protocol as p
from conveyor.agent import AgentPool, WorkerOptions
from conveyor.agent.jobenv import without_settings
from conveyor.api_client import ApiClient
from conveyor.config import RunSettings, ServerSettings
from conveyor.errors import ConveyorError, api_error
from conveyor.pipeline import TriggerStep, parse_pipeline, walk
from conveyor.report import BuildReporter
from conveyor.server.service import ServerHandle, run_server

DEFAULT_FILES = (Path(".conveyor/pipeline.yml"), Path("pipeline.yml"))
LOCAL_PIPELINE = "local"
# Jobs reach local agents on their streams at once; should a stream fail, pings every second
# take over.
LOCAL_PING_INTERVAL = 1
# Lines waiting for the terminal; past this, jobs wait for it as they would for a slow terminal.
_CONSOLE_BUFFER = 1000


def find_pipeline(given: Path | None) -> Path:
    if given is not None:
        if not given.is_file():
            raise ConveyorError(f"pipeline file {given} does not exist")
        return given
    for candidate in DEFAULT_FILES:
        if candidate.is_file():
            return candidate
    raise ConveyorError(
        "no pipeline file given and none found at " + " or ".join(str(f) for f in DEFAULT_FILES)
    )


class Console:
    """Everything `conveyor run` prints goes through here: written in a worker thread, so a
    terminal that is slow to read (a paused pager) never blocks the server or the agents."""

    def __init__(self, out: TextIO):
        self.out = out
        send, receive = anyio.create_memory_object_stream[str](_CONSOLE_BUFFER)
        self._send: MemoryObjectSendStream[str] = send
        self._receive: MemoryObjectReceiveStream[str] = receive

    async def print(self, text: str) -> None:
        await self._send.send(text)

    def print_nowait(self, text: str) -> None:
        """For the last words of a job, which cannot wait: dropped if the console is full."""
        with suppress(anyio.WouldBlock, anyio.ClosedResourceError):
            self._send.send_nowait(text)

    async def run(self) -> None:
        """Writes until `close`; a closed pipe ends the output, not the build."""
        broken = False
        async with self._receive:
            async for text in self._receive:
                batch = [text]
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                if not broken:
                    try:
                        await anyio.to_thread.run_sync(self._write, "".join(batch))
                    except (BrokenPipeError, ValueError):
                        broken = True

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def close(self) -> None:
        self._send.close()


class LabelledOutput:
    """A job's output, line by line, each line prefixed with the job's label."""

    def __init__(self, label: str, console: Console):
        self._prefix = f"{label} │ "
        self._console = console
        self._partial = b""

    async def write(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if lines:
            await self._console.print("".join(self._line(line) for line in lines))

    def close(self) -> None:
        if self._partial:
            # The job has ended; its last line is the one thing left to show.
            self._console.print_nowait(self._line(self._partial))
            self._partial = b""

    def _line(self, line: bytes) -> str:
        return self._prefix + line.rstrip(b"\r").decode("utf-8", "replace") + "\n"


class _ConsoleWriter:
    """A file-like view of the console for the build reporter (lines are queued, not written)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        return None


@dataclass
class LocalResult:
    build: p.BuildOut | None
    interrupted: bool

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.build is not None and self.build.state == p.BuildState.PASSED else 1


@asynccontextmanager
async def _data_dir(given: Path | None) -> AsyncIterator[Path]:
    if given is not None:
        yield given
        return
    path = Path(
        await anyio.to_thread.run_sync(functools.partial(tempfile.mkdtemp, prefix="conveyor-run-"))
    )
    try:
        yield path
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                functools.partial(shutil.rmtree, path, ignore_errors=True)
            )


async def run_local(
    pipeline_file: Path,
    settings: RunSettings,
    *,
    workdir: Path,
    out: TextIO | None = None,
    env: dict[str, str] | None = None,
    unblock: Unblocker | None = None,
    triggers: dict[str, Path] | None = None,
) -> LocalResult:
    text = await anyio.Path(pipeline_file).read_text()
    # Reject a bad pipeline (or a bad triggered one) before anything starts.
    pipelines = await anyio.to_thread.run_sync(
        functools.partial(_trigger_files, pipeline_file, text, triggers or {})
    )
    unblock = unblock or Unblocker()
    console = Console(out or sys.stdout)
    result = LocalResult(build=None, interrupted=False)
    async with _data_dir(settings.data_dir) as data_dir, anyio.create_task_group() as outer:
        outer.start_soon(console.run)
        try:
            async with anyio.create_task_group() as tg:
                server_settings = ServerSettings(
                    listen="127.0.0.1:0", data_dir=data_dir, log_level="warning"
                )
                handle: ServerHandle = await tg.start(_server, server_settings)
                await _register(handle, pipelines)
                await _run_build(handle, tg, text, pipeline_file, settings, workdir, env,
                                 console, result, unblock)  # fmt: skip
                tg.cancel_scope.cancel()
        finally:
            console.close()
    return result


async def _run_build(
    handle: ServerHandle,
    tg: anyio.abc.TaskGroup,
    text: str,
    pipeline_file: Path,
    settings: RunSettings,
    workdir: Path,
    env: dict[str, str] | None,
    console: Console,
    result: LocalResult,
    unblock: Unblocker,
) -> None:
    assert handle.registration_token and handle.api_token
    pool = AgentPool(
        WorkerOptions(
            endpoint=handle.url,
            registration_token=handle.registration_token,
            name="local-%spawn",
            shell=settings.shell,
            use_pty=not settings.no_pty,
            workdir=workdir,
        ),
        spawn=settings.agents,
        tee=lambda spec: LabelledOutput(spec.label, console),
    )
    follow = anyio.CancelScope()
    pool_done = anyio.Event()

    async def agents(*, task_status: TaskStatus[None]) -> None:
        try:
            await pool.run(task_status=task_status)
        finally:
            pool_done.set()
        # The pool ends only when stopped: nothing more will change.
        follow.cancel()

    await tg.start(agents)
    async with ApiClient.connect(handle.url, handle.api_token) as api:
        created = await api.create_build(
            LOCAL_PIPELINE,
            p.CreateBuildRequest(
                pipeline=text,
                filename=str(pipeline_file),
                message="conveyor run",
                # `$HOME` in a local pipeline means this shell's HOME, as it would on an agent
                # that uploads the pipeline; Conveyor's own settings stay out.
                env=without_settings(os.environ) if env is None else env,
            ),
        )
        for warning in created.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        tg.start_soon(_on_interrupt, pool, api, created, result)
        writer = _ConsoleWriter()
        reporter = BuildReporter(writer)
        with follow:
            async with anyio.create_task_group() as builds:
                # Triggered builds are followed too: their block steps need answers, and
                # the run is over only when they are (an async trigger's build included).
                followed: set[tuple[str, int]] = set()
                asking = anyio.Lock()  # one question on the terminal at a time

                async def follow_one(pipeline: str, number: int, *, top: bool = False) -> None:
                    async for build in api.follow_build(pipeline, number):
                        if top:
                            reporter.update(build)
                            await _flush(writer, console)
                        for step in build.steps:
                            ref = step.triggered_build
                            if ref is not None and (ref.pipeline, ref.number) not in followed:
                                followed.add((ref.pipeline, ref.number))
                                builds.start_soon(follow_one, ref.pipeline, ref.number)
                        if build.state == p.BuildState.BLOCKED:
                            await _flush(writer, console)
                            async with asking:
                                unblocked = await unblock.unblock(handle, build, console)
                            if not unblocked:
                                await api.cancel_build(build.pipeline, build.number)

                await follow_one(LOCAL_PIPELINE, created.number, top=True)
        result.build = await api.get_build(LOCAL_PIPELINE, created.number)
        reporter.update(result.build)
        reporter.summary(result.build)
        await _flush(writer, console)
    pool.stop()
    # The agents disconnect from the server before it goes away.
    with anyio.move_on_after(15):
        await pool_done.wait()


async def _flush(writer: _ConsoleWriter, console: Console) -> None:
    if writer.lines:
        text, writer.lines = "".join(writer.lines), []
        await console.print(text)


async def _server(settings: ServerSettings, *, task_status: TaskStatus[ServerHandle]) -> None:
    await run_server(
        settings,
        ping_interval=LOCAL_PING_INTERVAL,
        match_any_agent=True,
        task_status=task_status,
    )


async def _on_interrupt(
    pool: AgentPool, api: ApiClient, build: p.BuildOut, result: LocalResult
) -> None:
    """Ctrl-C: cancel the build (nothing more is scheduled), stop the running jobs (their
    processes are stopped: signal, grace, SIGKILL), and take no more jobs."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if result.interrupted:
                raise KeyboardInterrupt
            result.interrupted = True
            print("\ninterrupted: cancelling the build", file=sys.stderr, flush=True)
            pool.stop()
            pool.cancel_jobs(p.SignalReason.CANCEL)
            await api.cancel_build(build.pipeline, build.number)


def _trigger_files(pipeline_file: Path, text: str, given: dict[str, Path]) -> dict[str, str]:
    """The pipelines trigger steps name, slug → YAML text, following triggers of triggers.

    Parses every file on the way, so a bad one is reported before anything runs. A slug with
    no file is left out: its trigger step fails, saying so.
    """
    found: dict[str, str] = {}
    todo = [(pipeline_file, text)]
    while todo:
        path, source = todo.pop()
        pipeline = parse_pipeline(source, filename=str(path))
        for step, _ in walk(pipeline.steps):
            if not isinstance(step, TriggerStep) or step.pipeline in found:
                continue
            candidates = (
                [given[step.pipeline]]
                if step.pipeline in given
                else [pipeline_file.parent / f"{step.pipeline}{ext}" for ext in (".yml", ".yaml")]
            )
            target = next((c for c in candidates if c.is_file()), None)
            if target is None:
                if step.pipeline in given:
                    raise ConveyorError(
                        f"--trigger {step.pipeline}={given[step.pipeline]}: no such file"
                    )
                print(
                    f"warning: trigger step {step.label or step.pipeline!r} names pipeline "
                    f"{step.pipeline!r}, but neither {' nor '.join(map(str, candidates))} "
                    "exists (pass --trigger SLUG=FILE): it will fail",
                    file=sys.stderr,
                )
                continue
            found[step.pipeline] = target.read_text()
            todo.append((target, found[step.pipeline]))
    return found


async def _register(handle: ServerHandle, pipelines: dict[str, str]) -> None:
    """Store the triggered pipelines' steps on the embedded server."""
    if not pipelines:
        return
    async with _rest(handle) as http:
        for slug, text in pipelines.items():
            response = await http.put(f"/pipelines/{slug}", json={"steps": text})
            if response.status_code >= 400:
                raise api_error(response)


def _rest(handle: ServerHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=handle.url + p.REST_PREFIX,
        headers={"Authorization": f"Token {handle.api_token}"},
        timeout=30,
    )


@dataclass
class Unblocker:
    """How `conveyor run` answers block and input steps: `auto` unblocks them with `fields`
    (else each field's default); otherwise a terminal is asked, and without one the build
    cannot go on."""

    auto: bool = False
    fields: dict[str, str] = field(default_factory=dict)
    interactive: bool | None = None  # None: when standard input is a terminal

    async def unblock(self, handle: ServerHandle, build: p.BuildOut, console: Console) -> bool:
        """Unblock what blocks the build; False when nothing could be (the build is canceled)."""
        blocked = [s for s in build.steps if s.state == "blocked"]
        interactive = sys.stdin.isatty() if self.interactive is None else self.interactive
        if not blocked:
            return True
        async with _rest(handle) as http:
            for step in blocked:
                name = step.label or step.key or step.kind
                if self.auto:
                    values = {
                        f.key: self.fields[f.key] for f in step.fields if f.key in self.fields
                    }
                    await console.print(f"unblocking {name!r} (--unblock)\n")
                elif interactive:
                    answers = await anyio.to_thread.run_sync(_ask, step)
                    if answers is None:
                        await console.print(f"{name!r} was not unblocked: canceling the build\n")
                        return False
                    values = answers
                else:
                    await console.print(
                        f"{name!r} is blocked and there is no terminal to ask: rerun with "
                        "--unblock (and --field KEY=VALUE for its fields); canceling the build\n"
                    )
                    return False
                response = await http.post(
                    f"/pipelines/{build.pipeline}/builds/{build.number}/steps/{step.id}/unblock",
                    json={"fields": values},
                )
                if response.status_code >= 400:
                    await console.print(f"cannot unblock {name!r}: {api_error(response)}\n")
                    return False
        return True


def _ask(step: p.StepOut) -> dict[str, str] | None:
    """Prompt on the terminal for a blocked step: confirm, then each field."""
    name = step.label or step.key or step.kind
    if step.prompt:
        print(step.prompt)
    if input(f"{name}: unblock? [y/N] ").strip().lower() not in ("y", "yes"):
        return None
    values: dict[str, str] = {}
    for f in step.fields:
        hint = f" ({f.hint})" if f.hint else ""
        options = f" [{', '.join(o.value for o in f.options)}]" if f.options else ""
        default = f.default if isinstance(f.default, str) else ", ".join(f.default or [])
        shown = f" (default {default})" if default else ""
        answer = input(f"  {f.label}{hint}{options}{shown}: ").strip()
        if answer:
            values[f.key] = answer
    return values
