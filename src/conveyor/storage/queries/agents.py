"""Agents: registration, connection state, heartbeats."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from conveyor.errors import NotFoundError
from conveyor.storage import tables as t
from conveyor.storage.queries.base import QueryBase, new_id, utcnow
from conveyor.storage.rows import AgentRow


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
        q = select(t.agents).where(t.agents.c.id == agent_id)
        if lock and self.backend == "postgresql":
            q = q.with_for_update()
        r = (await self.conn.execute(q)).first()
        if r is None:
            raise NotFoundError(f"no agent {agent_id}")
        return agent_row(r)

    async def list_agents(self, *, include_gone: bool = False) -> list[AgentRow]:
        q = select(t.agents).order_by(t.agents.c.created_at)
        if not include_gone:
            q = q.where(t.agents.c.state.in_(["registered", "connected"]))
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

    async def agents_with_jobs(self, agent_ids: list[str]) -> set[str]:
        """Which of these agents hold a job (assigned, accepted or running) right now."""
        if not agent_ids:
            return set()
        # Every busy agent, then the intersection here: an IN list of every streaming agent
        # (a hundred bound values) cost more to compile on each dispatch pass than this.
        rows = await self.conn.execute(
            select(t.agents.c.id).where(t.agents.c.current_job_id.is_not(None))
        )
        return {r.id for r in rows} & set(agent_ids)

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
                t.agents.c.state.in_(["registered", "connected"]),
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
        await self.conn.execute(
            update(t.agents)
            .where(t.agents.c.id == agent_id)
            .values(last_heartbeat_at=at, last_seen_at=at)
        )

    async def touch_agent(self, agent_id: str) -> None:
        await self.conn.execute(
            update(t.agents).where(t.agents.c.id == agent_id).values(last_seen_at=utcnow())
        )

    async def set_agent_job(
        self, agent_id: str, job_id: str | None, *, succeeded: bool | None = None
    ) -> None:
        values: dict[str, Any] = {"current_job_id": job_id}
        if succeeded:
            values["last_success_at"] = utcnow()
        await self.conn.execute(update(t.agents).where(t.agents.c.id == agent_id).values(**values))
