"""The pool: `--spawn N` workers in one task group, stopped together."""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus

from conveyor import protocol as p
from conveyor.agent.worker import AgentWorker, Tee, WorkerOptions
from conveyor.client import new_http_client


class AgentPool:
    def __init__(self, options: WorkerOptions, *, spawn: int = 1, tee: Tee | None = None):
        self.options = options
        self.spawn = spawn
        self._tee = tee
        self.workers: list[AgentWorker] = []

    def stop(self) -> None:
        """Graceful: no new jobs; running jobs finish; then every worker disconnects."""
        for worker in self.workers:
            worker.stop()

    def cancel_jobs(self, reason: p.SignalReason = p.SignalReason.AGENT_STOP) -> None:
        for worker in self.workers:
            worker.cancel_job(reason)

    @property
    def failures(self) -> list[str]:
        """Why workers stopped on their own (the server refused them)."""
        return [f"{w.name}: {w.failure}" for w in self.workers if w.failure]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Returns once every worker has stopped. Ready when every worker has registered."""
        async with new_http_client(self.options.endpoint) as http, anyio.create_task_group() as tg:
            for index in range(1, self.spawn + 1):
                worker = AgentWorker(self.options, http, index=index, tee=self._tee)
                self.workers.append(worker)
                await tg.start(worker.run)
            task_status.started()
