"""The agents' streams, and how runnable jobs are handed to idle streaming agents.

Each worker keeps one `GET /agent/v1/stream` open; this replica keeps a bounded queue of
messages per open stream. Jobs are handed out in dispatch order (priority, then age), each to
the best idle matching agent: the one that most recently finished a job successfully (its caches
are warm), then the higher agent priority.

Assignment happens in two places:

- **Inside the transaction that makes work available** (a build created, a job finished and the
  next step scheduled, an agent freed, a job put back in the queue), just before it commits
  (`ServerStore` calls `assign`). The push goes out as soon as that transaction has committed:
  no second transaction, no wake-up of another task on the way.
- **The pusher** (`run`), woken by `kick()`, makes a full pass in a transaction of its own: it
  re-reads which agents hold a job, then assigns. It covers what the first cannot see: a stream
  that just opened, an agent resumed or retagged, agents freed in bulk (a cancel), another
  connection's or replica's changes (PostgreSQL).

Assignment is a compare-and-set on the job (and on the agent holding no job), as for pings, so
no job is handed out twice and no agent is given two. The push carries the job's spec and a new
job token, so the agent starts the job without an accept round trip; the job stays `assigned`
until it starts, so an assignment whose push was lost is offered again (see
`reaper.expire_assignments`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from conveyor import protocol as p
from conveyor.server.dispatcher import matches, take_for_stream
from conveyor.storage import Tx
from conveyor.storage.queries.base import TxChanges, utcnow
from conveyor.storage.rows import AgentRow, JobRow

if TYPE_CHECKING:
    from conveyor.server.transactions import ServerStore

log = logging.getLogger("conveyor.server")

_QUEUE = 64
_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass
class _Stream:
    agent: AgentRow
    send: MemoryObjectSendStream[p.StreamMessage]
    receive: MemoryObjectReceiveStream[p.StreamMessage]
    busy: bool = False
    # Chosen by a transaction that has not committed yet: no other pass may choose it.
    reserved: bool = False
    opened_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Assigned:
    """A job assigned to a streaming agent in a transaction, to push once it has committed."""

    agent_id: str
    job_id: str
    spec: p.JobSpec | None


MakeSpec = Callable[[Tx, JobRow, AgentRow], Awaitable[p.JobSpec]]
"""(tx, job just assigned, its agent) → the job's spec, with a new token (`server.jobspec`)."""


class StreamHub:
    def __init__(
        self,
        store: ServerStore,
        *,
        match_any_agent: bool = False,
        make_spec: MakeSpec | None = None,
    ) -> None:
        self._store = store
        self._match_any = match_any_agent
        self._make_spec = make_spec
        self._streams: dict[str, _Stream] = {}
        self._wake = anyio.Event()
        # SQLite: every transaction of this server takes turns on one connection, so one that
        # assigned before committing saw everything; a pass after it finds nothing new unless
        # something the transactions do not record changed meanwhile (`_stale`).
        self._one_connection = store.backend == "sqlite"
        self._stale = True
        # Pushes that found no stream: their jobs go back to the queue (by the pusher).
        self._unpushed: list[Assigned] = []

    # ---- streams -----------------------------------------------------------------------------

    def open(self, agent: AgentRow, *, busy: bool) -> MemoryObjectReceiveStream[p.StreamMessage]:
        """Register a new stream for `agent`; an older one of the same agent is closed."""
        old = self._streams.pop(agent.id, None)
        if old is not None:
            old.send.close()
        send, receive = anyio.create_memory_object_stream[p.StreamMessage](_QUEUE)
        self._streams[agent.id] = _Stream(
            agent=agent,
            send=send,
            receive=receive,
            busy=busy,
            reserved=old is not None and old.reserved,
        )
        self._changed()
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
        self._changed()

    def busy(self, agent_id: str) -> None:
        stream = self._streams.get(agent_id)
        if stream is not None:
            stream.busy = True

    def job_done(self, agent: AgentRow) -> None:
        """The agent finished its job: what we now know of it (when it last succeeded).

        That it holds no job any more was recorded by the transaction that said so (and that
        transaction may already have given it the next job)."""
        stream = self._streams.get(agent.id)
        if stream is not None:
            stream.agent = agent
        self.kick()

    def close_all(self) -> None:
        for stream in self._streams.values():
            stream.send.close()
        self._streams.clear()

    # ---- assignment inside a transaction ----------------------------------------------------

    def wants_pass(self, changes: TxChanges) -> bool:
        """Could an assignment in this transaction find work and an agent for it?"""
        if not (changes.runnable or changes.freed_agents):
            return False
        return any(self._available(s, changes.freed_agents) for s in self._streams.values())

    async def assign(self, tx: Tx, *, refresh: bool = False) -> list[Assigned]:
        """Assign runnable jobs to idle streaming agents in `tx`. The agents chosen are
        reserved until `committed` or `rolled_back` is called with the result."""
        if refresh:
            # Whether an agent is busy is what the database says (a job offered to it may have
            # been canceled, expired or refused since): the flags only bridge passes.
            holding = await tx.agents_with_jobs()
            for stream in self._streams.values():
                if not stream.reserved:
                    stream.busy = stream.agent.id in holding
        freed = tx.changes.freed_agents
        idle = [s for s in self._streams.values() if self._available(s, freed)]
        if not idle:
            return []
        # Warm caches first: the agent that most recently finished a job successfully, then
        # the agent's own priority.
        idle.sort(key=lambda s: (s.agent.last_success_at or _EPOCH, s.agent.priority), reverse=True)
        assigned: list[Assigned] = []
        try:
            for job in await tx.dispatch_candidates(max(8, 2 * len(idle))):
                taken = await self._assign_job(tx, job, idle)
                if taken is not None:
                    assigned.append(taken)
                if not idle:
                    break
        except BaseException:
            self.rolled_back(assigned)
            raise
        return assigned

    async def _assign_job(self, tx: Tx, job: JobRow, idle: list[_Stream]) -> Assigned | None:
        for stream in list(idle):
            if stream.reserved or not (
                self._match_any or matches(job.agent_query, stream.agent.tags)
            ):
                continue
            stream.reserved = True  # before the first await: no other pass takes it now
            agent = stream.agent
            now = utcnow()
            try:
                outcome = await take_for_stream(tx, job, agent.id, now)
                if outcome == "job-taken":
                    stream.reserved = False
                    return None  # not runnable any more, or its group is full
                if outcome == "agent-busy":
                    # It holds a job after all (taken by a ping), is paused or gone: not
                    # offered again until a full pass reads what it holds.
                    stream.reserved = False
                    stream.busy = True
                    idle.remove(stream)
                    continue
                spec = None
                if self._make_spec is not None:
                    held = dataclasses.replace(
                        job, state="assigned", agent_id=agent.id, assigned_at=now
                    )
                    spec = await self._make_spec(tx, held, agent)
            except BaseException:
                stream.reserved = False
                raise
            idle.remove(stream)
            return Assigned(agent_id=agent.id, job_id=job.id, spec=spec)
        return None

    def committed(self, changes: TxChanges, assigned: list[Assigned]) -> None:
        """A transaction committed: follow the agents it freed, push what it assigned."""
        for agent_id in changes.freed_agents:
            stream = self._streams.get(agent_id)
            if stream is not None and not stream.reserved:
                stream.busy = False
        if changes.freed_unknown:
            self._changed()
        for item in assigned:
            stream = self._streams.get(item.agent_id)
            if stream is not None:
                stream.reserved = False
                stream.busy = True
            message = p.StreamMessage(
                type=p.StreamMessageType.JOB_ASSIGNED, job=p.JobRef(id=item.job_id), spec=item.spec
            )
            if not self.push(item.agent_id, message):
                # The stream went away between the claim and the push, or its agent has not
                # read it for a long time (its queue is full: it is dropped, the agent will
                # reconnect). The job goes back to the queue.
                if stream is not None:
                    stream.send.close()
                    del self._streams[item.agent_id]
                self._unpushed.append(item)
                self._changed()

    def rolled_back(self, assigned: list[Assigned]) -> None:
        """A transaction that assigned did not commit: nothing it chose is taken."""
        for item in assigned:
            stream = self._streams.get(item.agent_id)
            if stream is not None:
                stream.reserved = False
        self._changed()

    def _available(self, stream: _Stream, freed: set[str]) -> bool:
        return (
            not stream.reserved
            and not stream.agent.paused
            and (not stream.busy or stream.agent.id in freed)
        )

    # ---- the pusher --------------------------------------------------------------------------

    def kick(self) -> None:
        """Work may have appeared: make a pass soon (unless transactions already did)."""
        if not self._one_connection:
            self._stale = True
        self._wake.set()

    def sweep(self) -> None:
        """A full pass whatever the transactions did (a safety net, called now and then)."""
        self._changed()

    def _changed(self) -> None:
        self._stale = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self._put_back_unpushed()
                if self._stale:
                    await self.dispatch()
            except Exception:
                # A failed pass (a database hiccup) must not end dispatching; the next kick
                # or the agents' pings retry.
                self._stale = True
                log.exception("dispatch pass failed")

    async def dispatch(self) -> None:
        """A full pass, in a transaction of its own."""
        self._stale = False
        if not self._streams:
            return
        async with self._store.transaction(full_pass=True):
            pass  # the pass runs as the transaction ends (`ServerStore.transaction`)

    async def _put_back_unpushed(self) -> None:
        while self._unpushed:
            item = self._unpushed.pop()
            async with self._store.transaction() as tx:
                if await tx.transition_job(
                    item.job_id, ["assigned"], "scheduled", held_by=item.agent_id, agent_id=None
                ):
                    await tx.revoke_job_tokens(item.job_id)
                    await tx.set_agent_job(item.agent_id, None)
