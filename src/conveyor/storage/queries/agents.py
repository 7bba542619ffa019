"""Agents: registration, connection state, heartbeats."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update

from conveyor.errors import NotFoundError
from conveyor.storage import tables as t
from conveyor.storage.queries.base import QueryBase, new_id, utcnow
from conveyor.storage.rows import AgentRow

_LIVE = ["registered", "connected"]
# Hot statements, built once (bound names in an UPDATE must differ from column names).
_BY_ID = select(t.agents).where(t.agents.c.id == bindparam("of_agent"))
_BY_ID_LOCKED = _BY_ID.with_for_update()
_BUSY = select(t.agents.c.id).where(t.agents.c.current_job_id.is_not(None))
_CLAIMABLE = (
    t.agents.c.id == bindparam("of_agent"),
    t.agents.c.current_job_id.is_(None),
    t.agents.c.paused == 0,
    t.agents.c.state.in_(_LIVE),
)
_CLAIM = update(t.agents).where(*_CLAIMABLE).values(current_job_id=bindparam("job"))
# PostgreSQL: an agent whose row another transaction holds is not waited for (it is busy
# changing, and waiting could close a cycle of locks with that transaction).
_CLAIM_SKIP_LOCKED = (
    update(t.agents)
    .where(
        t.agents.c.id
        == select(t.agents.c.id)
        .where(*_CLAIMABLE)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    .values(current_job_id=bindparam("job"))
)
_SET_JOB = (
    update(t.agents)
    .where(t.agents.c.id == bindparam("of_agent"))
    .values(current_job_id=bindparam("job"))
)
_SET_JOB_SUCCEEDED = (
    update(t.agents)
    .where(t.agents.c.id == bindparam("of_agent"))
    .values(current_job_id=bindparam("job"), last_success_at=bindparam("at"))
)
_HEARTBEAT = (
    update(t.agents)
    .where(t.agents.c.id == bindparam("of_agent"))
    .values(last_heartbeat_at=bindparam("at"), last_seen_at=bindparam("at"))
)
_TOUCH = (
    update(t.agents)
    .where(t.agents.c.id == bindparam("of_agent"))
    .values(last_seen_at=bindparam("at"))
)


def agent_row(r: Any) -> AgentRow:
    return AgentRow(
        id=r.id,
        name=r.name,
        hostname=r.hostname,
        version=r.version,
        tags=dict(r.tags),
        priority=r.priority,
        state=r.state,
        created_at=r.created_at,
        connected_at=r.connected_at,
        last_heartbeat_at=r.last_heartbeat_at,
        last_success_at=r.last_success_at,
        current_job_id=r.current_job_id,
        process_id=r.process_id,
        paused=bool(r.paused),
    )


class AgentQueries(QueryBase):
    async def insert_agent(
        self,
        *,
        name: str,
        hostname: str,
        os: str,
        arch: str,
        version: str,
        pid: int,
        tags: dict[str, str],
        priority: int,
        process_id: str | None = None,
    ) -> str:
        agent_id = new_id()
        await self.conn.execute(
            t.agents.insert().values(
                id=agent_id,
                name=name,
                hostname=hostname,
                os=os,
                arch=arch,
                version=version,
                pid=pid,
                tags=tags,
                priority=priority,
                state="registered",
                created_at=utcnow(),
                last_seen_at=utcnow(),
                process_id=process_id,
                paused=0,
            )
        )
        return agent_id

    async def get_agent(self, agent_id: str, *, lock: bool = False) -> AgentRow:
        """`lock` holds the agent's row until the transaction ends (PostgreSQL), so one agent's
        concurrent requests that change what it holds take turns."""
        q = _BY_ID_LOCKED if lock and self.backend == "postgresql" else _BY_ID
        r = (await self.conn.execute(q, {"of_agent": agent_id})).first()
        if r is None:
            raise NotFoundError(f"no agent {agent_id}")
        return agent_row(r)

    async def list_agents(self, *, include_gone: bool = False) -> list[AgentRow]:
        q = select(t.agents).order_by(t.agents.c.created_at)
        if not include_gone:
            q = q.where(t.agents.c.state.in_(_LIVE))
        return [agent_row(r) for r in await self.conn.execute(q)]

    async def set_agent_state(self, agent_id: str, state: str, **values: Any) -> None:
        now = utcnow()
        extra: dict[str, Any] = {"last_seen_at": now}
        if state == "connected":
            extra["connected_at"] = now
        elif state in ("disconnected", "lost"):
            extra["disconnected_at"] = now
        await self.conn.execute(
            update(t.agents).where(t.agents.c.id == agent_id).values(state=state, **extra, **values)
        )

    async def agents_with_jobs(self) -> set[str]:
        """Every agent that holds a job (assigned, accepted or running) right now."""
        # Not an IN list of the agents the caller cares about: a hundred bound values cost more
        # to compile on each dispatch pass than reading every busy agent.
        return {r.id for r in await self.conn.execute(_BUSY)}

    async def claim_agent(self, agent_id: str, job_id: str) -> bool:
        """Compare-and-set: give the job to a live, unpaused agent that holds none. False if
        the agent holds a job (or is paused, or gone), or, on PostgreSQL, if another
        transaction is changing its row right now (never waited for)."""
        statement = _CLAIM_SKIP_LOCKED if self.backend == "postgresql" else _CLAIM
        result = await self.conn.execute(statement, {"of_agent": agent_id, "job": job_id})
        return bool(result.rowcount)

    async def update_agent(self, agent_id: str, **values: Any) -> None:
        await self.conn.execute(update(t.agents).where(t.agents.c.id == agent_id).values(**values))

    async def process_agents(self, process_id: str) -> list[AgentRow]:
        """The live workers of one agent process."""
        rows = await self.conn.execute(
            select(t.agents)
            .where(
                t.agents.c.process_id == process_id,
                t.agents.c.state.in_(["registered", "connected"]),
            )
            .order_by(t.agents.c.created_at)
        )
        return [agent_row(r) for r in rows]

    async def silent_agents(self, before: datetime) -> list[AgentRow]:
        """Live agents whose last sign of life is older than `before`."""
        rows = await self.conn.execute(
            select(t.agents).where(
                t.agents.c.state.in_(_LIVE),
                t.agents.c.last_seen_at < before,
            )
        )
        return [agent_row(r) for r in rows]

    async def mark_agent_lost(self, agent_id: str, before: datetime) -> bool:
        """Compare-and-set: only an agent still silent since `before` is marked lost."""
        result = await self.conn.execute(
            update(t.agents)
            .where(
                t.agents.c.id == agent_id,
                t.agents.c.state.in_(["registered", "connected"]),
                t.agents.c.last_seen_at < before,
            )
            .values(state="lost", disconnected_at=utcnow(), current_job_id=None)
        )
        return bool(result.rowcount)

    async def record_heartbeat(self, agent_id: str, at: datetime) -> None:
        await self.conn.execute(_HEARTBEAT, {"of_agent": agent_id, "at": at})

    async def touch_agent(self, agent_id: str) -> None:
        await self.conn.execute(_TOUCH, {"of_agent": agent_id, "at": utcnow()})

    async def set_agent_job(
        self, agent_id: str, job_id: str | None, *, succeeded: bool | None = None
    ) -> None:
        params = {"of_agent": agent_id, "job": job_id}
        if succeeded:
            await self.conn.execute(_SET_JOB_SUCCEEDED, {**params, "at": utcnow()})
        else:
            await self.conn.execute(_SET_JOB, params)
        if job_id is None:
            self.changes.freed_agents.add(agent_id)
