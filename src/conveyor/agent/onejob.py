"""`conveyor bootstrap --job FILE`: one job run on this machine from a JSON description, with
no server — the job executor in a PTY (or on pipes), its output on standard output.

    {"command": "make test", "env": {"CI": "true"}, "repository": "https://...",
     "commit": "HEAD", "branch": "main", "plugins": [{"source": "./my-plugin", "config": {}}]}
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from conveyor import jobsocket
from conveyor.agent.executor import EXECUTOR, executor_env
from conveyor.agent.jobenv import without_settings
from conveyor.agent.worker import WorkerOptions
from conveyor.errors import ConfigError
from conveyor.pipeline.plugins import full_source
from conveyor.protocol import SignalReason
from conveyor.runner.job import JobResult, JobRun, JobRunner


class PluginEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1)
    config: Any = None


class JobFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: str = ""
    label: str = "local job"
    env: dict[str, str] = Field(default_factory=dict)
    repository: str = ""
    commit: str = "HEAD"
    branch: str = ""
    plugins: list[PluginEntry] = Field(default_factory=list)


def read_job_file(path: Path) -> JobFile:
    """The job in `path`; a `ConfigError` naming the file and field when it is not one."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read job file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
    try:
        return JobFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the job"
        raise ConfigError(f"{path}: {where}: {first['msg']}", key=where) from None


class _Stdout:
    async def write(self, data: bytes) -> None:
        await anyio.to_thread.run_sync(_write_out, data)

    def close(self) -> None:
        return None


def _write_out(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


class _LogFile:
    """The job's log (what a server would store), kept in a file, or nowhere."""

    def __init__(self, path: Path | None):
        self._path = path

    async def upload_chunk(self, sequence: int, offset: int, data: bytes) -> None:
        if self._path is not None:
            await anyio.to_thread.run_sync(_append, self._path, data)


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def check_checkout_dir(job: JobFile, workdir: Path | None) -> None:
    """A job with a repository empties its directory (`git clean`, or removal when it is not
    a clone): only a directory named for it, and empty or a clone already, will do."""
    if not job.repository:
        return
    if workdir is None:
        raise ConfigError(
            "this job checks out a repository: give --dir, a directory for the checkout "
            "(it is emptied of everything git does not track)",
            key="dir",
        )
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / ".git").is_dir():
        raise ConfigError(
            f"--dir {workdir} is not empty and not a git checkout: the checkout would remove "
            "what is in it; give an empty or new directory",
            key="dir",
        )


async def run_job_file(job: JobFile, opts: WorkerOptions, *, log_file: Path | None) -> JobResult:
    workdir = opts.workdir or Path.cwd()
    job_id = f"local-{uuid.uuid4()}"
    facts = {
        "CI": "true",
        "CONVEYOR": "true",
        "CONVEYOR_JOB_ID": job_id,
        "CONVEYOR_LABEL": job.label,
        "CONVEYOR_COMMAND": job.command,
        "CONVEYOR_REPO": job.repository,
        "CONVEYOR_COMMIT": job.commit,
        "CONVEYOR_BRANCH": job.branch,
        "CONVEYOR_PLUGINS": json.dumps(
            [{"source": full_source(p.source), "config": p.config} for p in job.plugins]
        ),
        "CONVEYOR_BUILD_CHECKOUT_PATH": str(workdir),
        "CONVEYOR_PTY": "true" if opts.use_pty else "false",
    }
    env = {**without_settings(os.environ), **job.env, **facts, **executor_env(opts)}
    # Run inside another job, this one is a job of its own: not the outer job's API.
    env.pop(jobsocket.SOCKET_ENV, None)
    env.pop(jobsocket.TOKEN_ENV, None)
    if log_file is not None:
        await anyio.Path(log_file).write_bytes(b"")
    run = JobRun(
        command=job.command,
        env=env,
        cwd=workdir,
        shell=opts.shell,
        use_pty=opts.use_pty,
        cancel_grace=opts.cancel_grace,
        cancel_signal=opts.cancel_signal,
        argv=EXECUTOR,
    )
    runner = JobRunner(run, _LogFile(log_file), tee=_Stdout())
    async with anyio.create_task_group() as tg:

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    runner.cancel(SignalReason.CANCEL)

        tg.start_soon(on_signal)
        result = await runner.run()
        tg.cancel_scope.cancel()
    return result
