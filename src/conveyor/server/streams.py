"""The agents' streams, and the pusher that hands runnable jobs to idle streaming agents.

Each worker keeps one `GET /agent/v1/stream` open; this replica keeps a bounded queue of
messages per open stream. When work may have appeared (a build created, a job finished, an
agent connected or went away) someone calls `kick()`; the pusher wakes, takes runnable jobs in
dispatch order (priority, then age) and gives each to the best idle matching agent: the one
that most recently finished a job successfully (its caches are warm), then the higher agent
priority. Assignment is the same compare-and-set as for pings, so two replicas never hand one
job out twice. The push carries the job's spec and a new job token, so the agent starts the job
without an accept round trip; the job stays `assigned` until it starts, so an assignment whose
push was lost is offered again (see `reaper.expire_assignments`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from conveyor import protocol as p
from conveyor.server.dispatcher import matches
from conveyor.storage import Store, Tx
from conveyor.storage.queries.base import utcnow
from conveyor.storage.rows import AgentRow, JobRow

log = logging.getLogger("conveyor.server")

_QUEUE = 64
_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass
class _Stream:
    agent: AgentRow
    send: MemoryObjectSendStream[p.StreamMessage]
    receive: MemoryObjectReceiveStream[p.StreamMessage]
    busy: bool = False
    opened_at: datetime = field(default_factory=utcnow)


MakeSpec = Callable[[Tx, JobRow, AgentRow], Awaitable[p.JobSpec]]
"""(tx, job just assigned, its agent) → the job's spec, with a new token (`server.jobspec`)."""


class StreamHub:
    def __init__(
        self, store: Store, *, match_any_agent: bool = False, make_spec: MakeSpec | None = None
    ) -> None:
        self._store = store
        self._match_any = match_any_agent
        self._make_spec = make_spec
        self._streams: dict[str, _Stream] = {}
        self._wake = anyio.Event()

    # ---- streams -----------------------------------------------------------------------------

    def open(self, agent: AgentRow, *, busy: bool) -> MemoryObjectReceiveStream[p.StreamMessage]:
        """Register a new stream for `agent`; an older one of the same agent is closed."""
        old = self._streams.pop(agent.id, None)
        if old is not None:
            old.send.close()
        send, receive = anyio.create_memory_object_stream[p.StreamMessage](_QUEUE)
        self._streams[agent.id] = _Stream(agent=agent, send=send, receive=receive, busy=busy)
        self.kick()
        return receive

    def close(self, agent_id: str, receive: MemoryObjectReceiveStream[p.StreamMessage]) -> None:
        stream = self._streams.get(agent_id)
        receive.close()
        if stream is not None and stream.receive is receive:
            stream.send.close()
            del self._streams[agent_id]

    def push(self, agent_id: str, message: p.StreamMessage) -> bool:
        """Queue a message for the agent's stream; False if it has none here or it is full."""
        stream = self._streams.get(agent_id)
        if stream is None:
            return False
        try:
            stream.send.send_nowait(message)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True

    def refresh(self, agent: AgentRow) -> None:
        """New facts about an agent (tags, paused): dispatch goes by them from now on."""
        stream = self._streams.get(agent.id)
        if stream is not None:
            stream.agent = agent
        self.kick()

    def busy(self, agent_id: str) -> None:
        stream = self._streams.get(agent_id)
        if stream is not None:
            stream.busy = True

    def job_done(self, agent: AgentRow) -> None:
        """The agent finished its job: it is idle again, with what we now know of it."""
        stream = self._streams.get(agent.id)
        if stream is not None:
            stream.agent = agent
            stream.busy = False
        self.kick()

    def close_all(self) -> None:
        for stream in self._streams.values():
            stream.send.close()
        self._streams.clear()

    # ---- the pusher --------------------------------------------------------------------------

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.dispatch()
            except Exception:
                # A failed pass (a database hiccup) must not end dispatching; the next kick
                # or the agents' pings retry.
                log.exception("dispatch pass failed")

    def _idle(self) -> list[_Stream]:
        idle = [s for s in self._streams.values() if not s.busy and not s.agent.paused]
        # Warm caches first: the agent that most recently finished a job successfully, then
        # the agent's own priority.
        idle.sort(key=lambda s: (s.agent.last_success_at or _EPOCH, s.agent.priority), reverse=True)
        return idle

    async def dispatch(self) -> None:
        if not self._streams:
            return
        assigned: list[tuple[_Stream, str, p.JobSpec | None]] = []
        async with self._store.transaction() as tx:
            # Whether an agent is busy is what the database says (a job offered to it may have
            # been canceled, expired or refused since): the flag here only bridges a pass.
            holding = await tx.agents_with_jobs(list(self._streams))
            for stream in self._streams.values():
                stream.busy = stream.agent.id in holding
            idle = self._idle()
            if not idle:
                return
            for job in await tx.dispatch_candidates(max(8, 2 * len(idle))):
                agent = next(
                    (s for s in idle if self._match_any or matches(job.agent_query, s.agent.tags)),
                    None,
                )
                if agent is None or not await tx.lock_if_free(job.id):
                    continue
                now = utcnow()
                if await tx.transition_job(
                    job.id, ["scheduled"], "assigned", agent_id=agent.agent.id, assigned_at=now
                ):
                    await tx.set_agent_job(agent.agent.id, job.id)
                    spec = None
                    if self._make_spec is not None:
                        held = dataclasses.replace(
                            job, state="assigned", agent_id=agent.agent.id, assigned_at=now
                        )
                        spec = await self._make_spec(tx, held, agent.agent)
                    agent.busy = True
                    idle.remove(agent)
                    assigned.append((agent, job.id, spec))
                if not idle:
                    break
        for stream, job_id, spec in assigned:
            message = p.StreamMessage(
                type=p.StreamMessageType.JOB_ASSIGNED, job=p.JobRef(id=job_id), spec=spec
            )
            if not self.push(stream.agent.id, message):
                # The stream went away between the claim and the push: the job goes back.
                async with self._store.transaction() as tx:
                    if await tx.transition_job(job_id, ["assigned"], "scheduled", agent_id=None):
                        await tx.revoke_job_tokens(job_id)
                    await tx.set_agent_job(stream.agent.id, None)
                self.kick()
