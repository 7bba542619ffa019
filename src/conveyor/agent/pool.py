"""The pool: `--spawn N` workers in one task group, stopped together, and the agent process's
lifecycle around them: startup and shutdown hooks, the idle and uptime limits, the lock service
its jobs share, and why it stopped."""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import httpx
from anyio.abc import TaskStatus

from conveyor import protocol as p
from conveyor.agent.hooks import find_hook, run_hook
from conveyor.agent.jobenv import job_api_attach, job_lock_env
from conveyor.agent.lockservice import LockService
from conveyor.agent.worker import AgentWorker, Tee, WorkerOptions
from conveyor.client import new_http_client
from conveyor.errors import APIError, ConveyorError

log = logging.getLogger("conveyor.agent")

SHUTDOWN_HOOKS_DEADLINE_S = 120


@dataclass(frozen=True)
class Lifecycle:
    """When the agent stops by itself, and what it runs at start and stop. 0 means never."""

    disconnect_after_idle_timeout: float = 0
    disconnect_after_uptime: float = 0
    hooks_path: Path | None = None
    shutdown_hook: Path | None = None


class AgentPool:
    def __init__(
        self,
        options: WorkerOptions,
        *,
        spawn: int = 1,
        tee: Tee | None = None,
        lifecycle: Lifecycle | None = None,
        locks_dir: Path | None = None,
    ):
        self.options = options
        self.spawn = spawn
        self._tee = tee
        self.lifecycle = lifecycle or Lifecycle()
        self.workers: list[AgentWorker] = []
        self.shutdown_reason: str | None = None
        self.process_id = str(uuid.uuid4())
        self._busy: set[int] = set()
        self._idle_changed = anyio.Event()
        self._workers_tg: anyio.abc.TaskGroup | None = None
        self._http: httpx.AsyncClient | None = None
        self._stopping = False
        # Machine-scope locks for this process's jobs, in `locks_dir` (None: the host's default).
        self.locks = LockService(locks_dir)

    def stop(self, reason: str = "requested") -> None:
        """Graceful: no new jobs; running jobs finish; then every worker disconnects."""
        self._stopping = True
        self.shutdown_reason = self.shutdown_reason or reason
        for worker in self.workers:
            worker.stop()

    @property
    def live_workers(self) -> list[AgentWorker]:
        return [w for w in self.workers if not w.retiring and w.state != "stopped"]

    def apply_update(self, update: p.AgentUpdate) -> None:
        """The server changed this agent process's tags and/or worker count: apply it live."""
        if update.tags is not None:
            log.info("tags are now %s", update.tags)
            self.options = replace(self.options, tags=update.tags)
        if update.spawn is not None:
            self.set_spawn(update.spawn)

    def set_spawn(self, spawn: int) -> None:
        """Start or retire workers; a retired worker finishes its running job first."""
        if self._stopping or self._workers_tg is None:
            return
        live = self.live_workers
        log.info("running %d workers (was %d)", spawn, len(live))
        for worker in live[spawn:]:
            worker.retiring = True
            worker.stop()
        next_index = max((w.index for w in self.workers), default=0) + 1
        for index in range(next_index, next_index + spawn - len(live)):
            self._workers_tg.start_soon(self._start_worker, index)
        self.spawn = spawn

    async def _start_worker(
        self, index: int, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        assert self._http is not None
        # Set in this worker's task, so each of its jobs gets a lock token of its own.
        job_lock_env.set(functools.partial(self.locks.open_job, index))
        job_api_attach.set(functools.partial(self.locks.attach, index))
        worker = AgentWorker(
            self.options,
            self._http,
            index=index,
            tee=self._tee,
            on_busy=self._on_busy,
            on_update=self.apply_update,
            process_id=self.process_id,
        )
        self.workers.append(worker)
        await worker.run(task_status=task_status)

    def cancel_jobs(
        self, reason: p.SignalReason = p.SignalReason.AGENT_STOP, *, grace: float | None = None
    ) -> None:
        for worker in self.workers:
            worker.cancel_job(reason, grace=grace)

    @property
    def failures(self) -> list[str]:
        """Why workers stopped on their own (the server refused them)."""
        return [f"{w.name}: {w.failure}" for w in self.workers if w.failure]

    def _on_busy(self, worker: AgentWorker, busy: bool) -> None:
        (self._busy.add if busy else self._busy.discard)(worker.index)
        if not busy:
            self.locks.close_job(worker.index)
        self._idle_changed.set()
        self._idle_changed = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Returns once every worker has stopped. Ready when every worker has registered."""
        try:
            async with (
                new_http_client(self.options.endpoint) as http,
                anyio.create_task_group() as limits,
            ):
                # Ready before any worker can take a job; stopped with the limits, once every
                # worker has stopped.
                await limits.start(self.locks.run)
                if self.lifecycle.disconnect_after_idle_timeout:
                    limits.start_soon(self._idle_limit)
                if self.lifecycle.disconnect_after_uptime:
                    limits.start_soon(self._uptime_limit)
                self._http = http
                async with anyio.create_task_group() as workers:
                    self._workers_tg = workers
                    for index in range(1, self.spawn + 1):
                        await workers.start(self._start_worker, index)
                    await self._startup_hook()
                    task_status.started()
                self._workers_tg = None
                # Every worker has stopped: the limits (and the lock service) have nothing left
                # to watch.
                limits.cancel_scope.cancel()
        except* (httpx.TransportError, APIError):
            self.shutdown_reason = self.shutdown_reason or "unable-to-reach-server"
            raise
        finally:
            self.shutdown_reason = self.shutdown_reason or next(
                (w.stop_reason for w in self.workers if w.stop_reason),
                "unable-to-reach-server" if self.failures else "requested",
            )
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_HOOKS_DEADLINE_S):
                await self._shutdown_hooks()

    async def _idle_limit(self) -> None:
        """Stop once every worker has been idle for the timeout (from the latest change)."""
        timeout = self.lifecycle.disconnect_after_idle_timeout
        while True:
            changed = self._idle_changed
            if self._busy:
                await changed.wait()
                continue
            with anyio.move_on_after(timeout) as idle:
                await changed.wait()
            if idle.cancelled_caught and not self._busy:
                log.info("every worker was idle for %ss: stopping", timeout)
                self.stop("idle")
                return

    async def _uptime_limit(self) -> None:
        await anyio.sleep(self.lifecycle.disconnect_after_uptime)
        log.info(
            "up for %ss: stopping once running jobs finish", self.lifecycle.disconnect_after_uptime
        )
        self.stop("uptime")

    def _hook_env(self) -> dict[str, str]:
        return {
            "CONVEYOR_AGENT_NAMES": ",".join(w.name for w in self.workers),
            "CONVEYOR_AGENT_IDS": ",".join(w.agent_id or "" for w in self.workers),
        }

    async def _startup_hook(self) -> None:
        hook = await find_hook(self.lifecycle.hooks_path, "agent-startup")
        if hook is not None and await run_hook(hook, env=self._hook_env()) != 0:
            self.stop("requested")
            raise ConveyorError(f"the agent-startup hook {hook} failed: the agent stops")

    async def _shutdown_hooks(self) -> None:
        reason = self.shutdown_reason or "requested"
        env = {**self._hook_env(), "CONVEYOR_AGENT_SHUTDOWN_REASON": reason}
        hook = await find_hook(self.lifecycle.hooks_path, "agent-shutdown")
        for path in (hook, self.lifecycle.shutdown_hook):
            if path is not None:
                await run_hook(path, env=env, args=[reason])
