"""`conveyor run`: an embedded server and local agents in one task group, for one build.

The server (SQLite in a temporary or given data dir, on a loopback port) and the agents are the
same code that runs apart in production; jobs run in the working tree itself.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import anyio

from conveyor import protocol as p
from conveyor.agent import AgentPool, WorkerOptions
from conveyor.api_client import ApiClient
from conveyor.config import RunSettings, ServerSettings
from conveyor.errors import ConveyorError
from conveyor.pipeline import parse_pipeline
from conveyor.report import BuildReporter
from conveyor.server.service import ServerHandle, run_server

DEFAULT_FILES = (Path(".conveyor/pipeline.yml"), Path("pipeline.yml"))
LOCAL_PIPELINE = "local"
# The embedded server asks its agents to ping every second: there is no stream yet to push work.
LOCAL_PING_INTERVAL = 1


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


class LabelledOutput:
    """Prints a job's output line by line, each line prefixed with the job's label."""

    def __init__(self, label: str, out: TextIO):
        self._prefix = f"{label} │ "
        self._out = out
        self._partial = b""

    def write(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._print(line)

    def close(self) -> None:
        if self._partial:
            self._print(self._partial)
            self._partial = b""

    def _print(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        self._out.write(self._prefix + text + "\n")
        self._out.flush()


@dataclass
class LocalResult:
    build: p.BuildOut | None
    interrupted: bool

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.build is not None and self.build.state == p.BuildState.PASSED else 1


async def run_local(
    pipeline_file: Path,
    settings: RunSettings,
    *,
    workdir: Path,
    out: TextIO | None = None,
    env: dict[str, str] | None = None,
) -> LocalResult:
    out = out or sys.stdout
    text = await anyio.Path(pipeline_file).read_text()
    # Reject a bad pipeline before anything starts.
    parse_pipeline(text, filename=str(pipeline_file))
    with tempfile.TemporaryDirectory(prefix="conveyor-run-") as tmp:
        data_dir = settings.data_dir or Path(tmp)
        server_settings = ServerSettings(
            listen="127.0.0.1:0", data_dir=data_dir, log_level="warning"
        )
        result = LocalResult(build=None, interrupted=False)
        async with anyio.create_task_group() as tg:
            handle: ServerHandle = await tg.start(_server, server_settings)
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
                tee=lambda spec: LabelledOutput(spec.label, out),
            )
            follow = anyio.CancelScope()

            async def agents(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                await pool.run(task_status=task_status)
                # The pool ends only when stopped by an interrupt: nothing more will change.
                follow.cancel()

            await tg.start(agents)
            tg.start_soon(_on_interrupt, pool, result)
            async with ApiClient.connect(handle.url, handle.api_token) as api:
                created = await api.create_build(
                    LOCAL_PIPELINE,
                    p.CreateBuildRequest(
                        pipeline=text,
                        filename=str(pipeline_file),
                        message="conveyor run",
                        env=env or {},
                    ),
                )
                for warning in created.warnings:
                    print(f"warning: {warning}", file=sys.stderr)
                reporter = BuildReporter(out)
                with follow:
                    async for build in api.follow_build(LOCAL_PIPELINE, created.number):
                        reporter.update(build)
                result.build = await api.get_build(LOCAL_PIPELINE, created.number)
                reporter.update(result.build)
                reporter.summary(result.build)
            pool.stop()
            tg.cancel_scope.cancel()
    return result


async def _server(
    settings: ServerSettings, *, task_status: anyio.abc.TaskStatus[ServerHandle]
) -> None:
    await run_server(settings, ping_interval=LOCAL_PING_INTERVAL, task_status=task_status)


async def _on_interrupt(pool: AgentPool, result: LocalResult) -> None:
    """Ctrl-C: stop taking jobs and cancel the running ones (their processes are stopped)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if result.interrupted:
                raise KeyboardInterrupt
            result.interrupted = True
            print("\ninterrupted: cancelling running jobs", file=sys.stderr, flush=True)
            pool.stop()
            pool.cancel_jobs(p.SignalReason.CANCEL)
