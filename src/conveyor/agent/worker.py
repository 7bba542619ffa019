"""One worker: register, connect, then heartbeat and ping until stopped; runs one job at a time."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import random
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
from anyio.abc import TaskStatus

from conveyor import __version__
from conveyor import protocol as p
from conveyor.agent.actions import ActionLoop
from conveyor.agent.baton import Baton
from conveyor.agent.debouncer import Debouncer
from conveyor.agent.executor import executor_argv, executor_env, pre_bootstrap
from conveyor.agent.heartbeat import HeartbeatLoop
from conveyor.agent.jobenv import job_api_attach, job_process_env
from conveyor.agent.ping import PingLoop
from conveyor.agent.stream import StreamHealth, StreamLoop
from conveyor.client import AgentClient, JobClient
from conveyor.errors import APIError, JobGoneError
from conveyor.protocol import PingMode
from conveyor.runner.job import JobRun, JobRunner, OutputTee
from conveyor.runner.redactor import DEFAULT_REDACTED_VARS

log = logging.getLogger("conveyor.agent")

# Seconds a stopping worker gives `finish` and `disconnect`, even when cancelled.
FINISH_DEADLINE_S = 10 * 60
DISCONNECT_DEADLINE_S = 10

Tee = Callable[[p.JobSpec], OutputTee | None]


@dataclass(frozen=True)
class WorkerOptions:
    endpoint: str
    registration_token: str
    name: str = "%hostname-%spawn"
    tags: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    build_path: Path = field(default_factory=lambda: Path("~/.conveyor/builds").expanduser())
    shell: str = "/bin/bash -e -c"
    use_pty: bool = True
    ping_interval: int = 0  # 0: the server's
    ping_mode: PingMode = "auto"
    cancel_grace: float = 10.0
    disconnect_after_job: bool = False
    # Run this one job (it must be runnable, or become so), then disconnect.
    acquire_job: str | None = None
    # `conveyor run` runs jobs in the working tree itself instead of a checkout.
    workdir: Path | None = None
    hooks_path: Path | None = None
    plugins_path: Path = field(default_factory=lambda: Path("~/.conveyor/plugins").expanduser())
    plugins_enabled: bool = True
    allowed_plugins: str = ""
    local_hooks_enabled: bool = True
    cancel_signal: int = signal.SIGTERM
    git_mirrors_path: Path | None = None
    git_mirrors_lock_timeout: int = 300
    max_log_size: int = 1024**3
    redacted_vars: tuple[str, ...] = DEFAULT_REDACTED_VARS


def worker_name(template: str, index: int) -> str:
    return template.replace("%hostname", socket.gethostname()).replace("%spawn", str(index))


class AgentWorker:
    def __init__(
        self,
        options: WorkerOptions,
        http: httpx.AsyncClient,
        *,
        index: int,
        tee: Tee | None = None,
        on_busy: Callable[[AgentWorker, bool], None] | None = None,
        on_update: Callable[[p.AgentUpdate], None] | None = None,
        process_id: str | None = None,
    ):
        self.options = options
        self.index = index
        self.name = worker_name(options.name, index)
        self._registration = AgentClient(http, options.registration_token)
        self._tee = tee
        self._ping: PingLoop | None = None
        self._actions: ActionLoop | None = None
        self._heartbeat: HeartbeatLoop | None = None
        self._stream: StreamLoop | None = None
        self.state = "starting"
        self._job_id: str | None = None
        self._job_status_interval = 1.0
        self._runner: JobRunner | None = None
        self._in_job = False
        self._pending_cancel: p.SignalReason | None = None
        self._stop_requested = False
        self.agent_id: str | None = None
        self.jobs_run = 0
        # Why this worker stopped on its own, if the server refused it (e.g. its token).
        self.failure: str | None = None
        # Why it stopped, when it decided so itself (see agent.hooks.REASONS).
        self.stop_reason: str | None = None
        self._on_busy = on_busy
        self._on_update = on_update
        # Set when the pool shrinks: this worker finishes its job, then goes.
        self.retiring = False
        self._process_id = process_id
        # Jobs pushed on the stream with their spec and token: run without an accept.
        self._pushed: dict[str, p.JobSpec] = {}

    def status(self) -> dict[str, str]:
        """One line per loop, for the health server's /status.json."""
        lines = {"state": self.state}
        if self._job_id is not None:
            lines["job"] = f"running {self._job_id}"
        for loop, obj in (
            ("ping", self._ping),
            ("stream", self._stream),
            ("heartbeat", self._heartbeat),
        ):
            if obj is not None:
                lines[loop] = obj.status
        return lines

    def stop(self) -> None:
        """Take no more jobs; finish the running one, then disconnect."""
        self._stop_requested = True
        if self._ping is not None:
            self._ping.stop()
        if self._actions is not None:
            self._actions.stop()

    def cancel_job(
        self, reason: p.SignalReason = p.SignalReason.AGENT_STOP, *, grace: float | None = None
    ) -> None:
        """Cancel the running job; a job still being accepted or started is cancelled as soon
        as it has a runner, and never starts its command. `grace`: see `JobRunner.cancel`."""
        if self._runner is not None:
            self._runner.cancel(reason, grace=grace)
        elif self._in_job:
            self._pending_cancel = reason

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        opts = self.options
        registered = await self._registration.register(
            p.RegisterRequest(
                name=self.name,
                hostname=socket.gethostname(),
                os=platform.system().lower(),
                arch=platform.machine(),
                version=__version__,
                pid=os.getpid(),
                tags=opts.tags,
                priority=opts.priority,
                process_id=self._process_id,
            )
        )
        self.agent_id = registered.id
        self._job_status_interval = float(registered.job_status_interval)
        client = self._registration.with_token(registered.access_token)
        await client.connect()
        log.info("%s: registered as %s and connected", self.name, registered.id)
        interval = opts.ping_interval or registered.ping_interval
        baton, debouncer, health = Baton(), Debouncer(), StreamHealth()

        async def on_job(job_id: str) -> None:
            await self._run_job(client, job_id)

        self._ping = PingLoop(
            client, interval, on_job, name=self.name, baton=baton, on_update=self._on_update
        )
        self._heartbeat = HeartbeatLoop(client, registered.heartbeat_interval, self.name)
        self._stream = stream = StreamLoop(
            client,
            debouncer,
            health,
            name=self.name,
            stream_only=opts.ping_mode == "stream-only",
            on_cancel=self._cancel_by_server,
            on_update=self._on_update,
            on_spec=self._on_pushed_spec,
        )
        self._actions = ActionLoop(debouncer, health, baton, on_job, name=self.name)
        if self._stop_requested:
            self.stop()
        self.state = "idle"
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat.run)
                if opts.ping_mode != "ping-only" and opts.acquire_job is None:
                    tg.start_soon(stream.run)
                try:
                    async with anyio.create_task_group() as loops:
                        if opts.acquire_job is not None:
                            loops.start_soon(self._acquire, client, opts.acquire_job)
                        else:
                            if opts.ping_mode != "stream-only":
                                loops.start_soon(self._serve, self._ping.run)
                            if opts.ping_mode != "ping-only":
                                loops.start_soon(self._serve, self._actions.run)
                except* APIError as group:
                    # The server refuses this worker (its token was revoked, say): it stops;
                    # the pool's other workers go on.
                    self.failure = "; ".join(str(e) for e in group.exceptions)
                    log.error("%s: stopping: %s", self.name, self.failure)
                tg.cancel_scope.cancel()
        finally:
            self.state = "stopped"
            with anyio.CancelScope(shield=True), anyio.move_on_after(DISCONNECT_DEADLINE_S):
                try:
                    await client.disconnect()
                    log.info("%s: disconnected", self.name)
                except (httpx.TransportError, APIError) as exc:
                    log.warning("%s: disconnect failed: %s", self.name, exc)

    async def _serve(self, loop: Callable[[], Awaitable[bool]]) -> None:
        """Run a dispatch loop; when the server asks to disconnect, the whole worker stops."""
        if await loop():
            self.stop_reason = self.stop_reason or "requested"
            self.stop()

    async def _acquire(self, client: AgentClient, job_id: str) -> bool:
        """`--acquire-job`: run that one job, then stop. False if it could not be had."""
        try:
            ref = await client.acquire(job_id)
        except (httpx.TransportError, APIError) as exc:
            self.failure = f"could not acquire job {job_id}: {exc}"
            log.error("%s: %s", self.name, self.failure)
            return False
        await self._run_job(client, ref.id)
        self.stop_reason = "job-finished"
        return False

    def _cancel_by_server(self, job_id: str) -> None:
        if self._job_id == job_id:
            self.cancel_job(p.SignalReason.CANCEL)

    async def _run_job(self, client: AgentClient, job_id: str) -> None:
        self._in_job = True
        self._job_id = job_id
        if self._on_busy is not None:
            self._on_busy(self, True)
        self.state = "busy"
        try:
            await self._accept_and_run(client, job_id)
        finally:
            self.state = "stopping" if self._stop_requested else "idle"
            self._in_job = False
            self._job_id = None
            self._pending_cancel = None
            if self._on_busy is not None:
                self._on_busy(self, False)
        if self.options.disconnect_after_job:
            log.info("%s: disconnecting after one job, as configured", self.name)
            self.stop_reason = "job-finished"
            self.stop()

    def _on_pushed_spec(self, spec: p.JobSpec) -> None:
        self._pushed = {spec.id: spec}  # only the latest: the worker runs one job at a time

    async def _accept_and_run(self, client: AgentClient, job_id: str) -> None:
        spec = self._pushed.pop(job_id, None)
        if spec is None or not _fresh(spec):
            try:
                spec = await client.accept(job_id)
            except (httpx.TransportError, APIError) as exc:
                log.warning("%s: could not accept job %s: %s", self.name, job_id, exc)
                return
        job = client.job_client(spec)
        # The start is confirmed before the command runs: a job canceled or given to another
        # agent meanwhile is refused here, so its command never runs (nor runs twice). The
        # round trip is on every job's critical path, so what running the job takes is made
        # ready meanwhile.
        refused: list[Exception] = []

        async def start() -> None:
            try:
                await job.start()
            except (httpx.TransportError, APIError) as exc:
                refused.append(exc)

        runner: JobRunner | None = None
        unready: OSError | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(start)
            try:
                runner = await self._prepare(spec, job)
            except OSError as exc:  # the build path cannot be looked at, say
                unready = exc
        if refused:
            log.warning("%s: could not start job %s: %s", self.name, job_id, refused[0])
            await self._finish(job, exit_status=-1, reason=p.SignalReason.PROCESS_RUN_ERROR)
            return
        if runner is None:
            why = f"it could not be prepared: {unready}"
            await self._refuse(job, why, reason=p.SignalReason.PROCESS_RUN_ERROR)
            return
        if status := await pre_bootstrap(self.options, spec.id, spec.env):
            await self._refuse(job, f"the agent's pre-bootstrap hook refused it (status {status})")
            return
        self._runner = runner
        if self._pending_cancel is not None:
            runner.cancel(self._pending_cancel)
        log.info("%s: running job %s (%s)", self.name, spec.id, spec.label)
        try:
            async with anyio.create_task_group() as watch:
                watch.start_soon(self._watch_job, job, runner)
                result = await runner.run()
                watch.cancel_scope.cancel()
        except BaseException:
            # Stopped from outside (the agent is going down): the job still gets its last word.
            await self._finish(job, exit_status=-1, reason=p.SignalReason.AGENT_STOP)
            raise
        finally:
            self._runner = None
        self.jobs_run += 1
        await self._finish(
            job,
            exit_status=result.exit_status,
            signal=result.signal,
            reason=result.signal_reason,
            chunks_failed_count=result.chunks_failed_count,
        )
        log.info("%s: job %s exited with %s", self.name, spec.id, result.exit_status)

    async def _prepare(self, spec: p.JobSpec, job: JobClient) -> JobRunner:
        """The job's runner, its environment and working directory, ready to run."""
        opts = self.options
        workdir = opts.workdir or (opts.build_path / self.name / spec.pipeline)
        env = job_process_env(
            spec.env,
            agent_name=self.name,
            checkout_path=workdir,
            endpoint=opts.endpoint,
            job_token=spec.token,
            use_pty=opts.use_pty,
        )
        env.update(executor_env(opts))
        run = JobRun(
            command=spec.command,
            env=env,
            cwd=workdir,
            shell=opts.shell,
            use_pty=opts.use_pty,
            chunk_max_size=spec.chunks_max_size_bytes,
            chunk_interval=spec.chunks_interval_seconds,
            cancel_grace=opts.cancel_grace,
            cancel_signal=opts.cancel_signal,
            # The smaller of the server's limit and this agent's.
            max_log_size=min(spec.log_max_size_bytes, opts.max_log_size),
            redacted_vars=opts.redacted_vars,
            argv=await executor_argv(opts, env, workdir),
        )
        tee = self._tee(spec) if self._tee is not None else None
        runner = JobRunner(
            run, _JobSink(job, lambda: runner.cancel(p.SignalReason.CANCEL)), tee=tee
        )
        if (attach := job_api_attach.get()) is not None:
            attach(
                env,
                functools.partial(runner.redactor.add, name=_REDACTOR_ADD),
                opts.redacted_vars,
            )
        await runner.prepare()
        return runner

    async def _refuse(
        self, job: JobClient, why: str, *, reason: p.SignalReason = p.SignalReason.AGENT_REFUSED
    ) -> None:
        """Finish a job this agent will not run: -1 and `reason`, the why in its log."""
        log.warning("%s: job %s not run: %s", self.name, job.job_id, why)
        with contextlib.suppress(httpx.TransportError, APIError):
            await job.upload_chunk(1, 0, f"conveyor: this job was not run: {why}\r\n".encode())
        await self._finish(job, exit_status=-1, reason=reason)

    async def _watch_job(self, job: JobClient, runner: JobRunner) -> None:
        """Poll the job's state (interval plus jitter): a job the server is canceling, or one
        whose token it refuses, is stopped. The stream's `cancel_job` is faster; this also
        works without a stream and after this agent was declared lost."""
        interval = self._job_status_interval
        while True:
            await anyio.sleep(interval + random.uniform(0, interval))
            try:
                state = (await job.state()).state
            except JobGoneError:
                log.warning("%s: job %s is no longer ours: stopping it", self.name, job.job_id)
                runner.cancel(p.SignalReason.CANCEL)
                return
            except (httpx.TransportError, APIError):
                continue  # the server is unreachable for now; the job goes on
            if state in (p.JobState.CANCELING, p.JobState.CANCELED):
                log.info("%s: job %s was canceled", self.name, job.job_id)
                runner.cancel(p.SignalReason.CANCEL)
                return

    async def _finish(
        self,
        job: JobClient,
        *,
        exit_status: int,
        signal: str | None = None,
        reason: p.SignalReason | None = None,
        chunks_failed_count: int = 0,
    ) -> None:
        body = p.FinishRequest(
            exit_status=exit_status,
            signal=signal,
            signal_reason=reason,
            finished_at=datetime.now(UTC),
            chunks_failed_count=chunks_failed_count,
        )
        # Finishing is the last word on the job: it gets its own deadline even when stopping.
        with anyio.CancelScope(shield=True), anyio.move_on_after(FINISH_DEADLINE_S):
            try:
                await job.finish(body)
            except JobGoneError:
                log.warning("%s: job %s was already finished or is gone", self.name, job.job_id)
            except (httpx.TransportError, APIError) as exc:
                log.error("%s: could not finish job %s: %s", self.name, job.job_id, exc)


_REDACTOR_ADD = "a value given to `conveyor redactor add`"

EAGER_WINDOW_S = 5.0
"""A pushed job is started from its spec only if it was assigned this recently (by the
server's clock against ours): an older push may have been given to another agent since (after
`reaper.ASSIGNMENT_TIMEOUT_S`), so it is accepted first."""


def _fresh(spec: p.JobSpec) -> bool:
    if spec.assigned_at is None:
        return False
    age = (datetime.now(UTC) - spec.assigned_at).total_seconds()
    return -EAGER_WINDOW_S < age < EAGER_WINDOW_S


class _JobSink:
    """The job's log sink; a job call refused as gone (401/404) cancels the job, as the job
    is no longer this agent's to run (it was finished, reassigned or its build canceled)."""

    def __init__(self, job: JobClient, on_gone: Callable[[], None]):
        self._job = job
        self._on_gone = on_gone

    async def upload_chunk(self, sequence: int, offset: int, data: bytes) -> p.ChunkAck:
        try:
            return await self._job.upload_chunk(sequence, offset, data)
        except JobGoneError:
            self._on_gone()
            raise
