"""REST API for operating agents: list, pause, resume, stop, and update an agent process.

An order reaches a streaming agent at once (a stream message); an agent that only pings gets it
in its next ping's answer.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from conveyor import protocol as p
from conveyor.errors import NotFoundError
from conveyor.server.auth import api_token, context
from conveyor.server.context import ServerContext
from conveyor.storage.rows import AgentRow

router = APIRouter(prefix=p.REST_PREFIX, tags=["agents"], dependencies=[Depends(api_token)])

_GONE = ("disconnected", "lost")


def agent_out(a: AgentRow) -> p.AgentOut:
    return p.AgentOut(
        id=a.id,
        name=a.name,
        hostname=a.hostname,
        version=a.version,
        state=a.state,
        tags=a.tags,
        priority=a.priority,
        current_job_id=a.current_job_id,
        process_id=a.process_id,
        paused=a.paused,
        created_at=a.created_at,
        connected_at=a.connected_at,
        last_heartbeat_at=a.last_heartbeat_at,
    )


def _order(ctx: ServerContext, agent_id: str, message: p.StreamMessage) -> None:
    """Tell the agent now on its stream, else at its next ping."""
    if ctx.streams.push(agent_id, message):
        return
    order = ctx.orders.setdefault(agent_id, p.PingResponse())
    if message.type == p.StreamMessageType.DISCONNECT:
        order.action = p.PingAction.DISCONNECT
    elif message.type == p.StreamMessageType.UPDATE:
        order.update = message.update


async def _live_agent(ctx: ServerContext, agent_id: str) -> AgentRow:
    async with ctx.store.transaction() as tx:
        try:
            agent = await tx.get_agent(agent_id)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
    if agent.state in _GONE:
        raise HTTPException(409, f"agent {agent.name} is {agent.state}")
    return agent


@router.get("/agents", response_model=list[p.AgentOut])
async def list_agents(request: Request, all: bool = False) -> list[p.AgentOut]:
    async with context(request).store.transaction() as tx:
        agents = await tx.list_agents(include_gone=all)
    return [agent_out(a) for a in agents]


async def _set_paused(request: Request, agent_id: str, paused: bool) -> p.AgentOut:
    ctx = context(request)
    await _live_agent(ctx, agent_id)
    async with ctx.store.transaction() as tx:
        await tx.update_agent(agent_id, paused=int(paused))
        agent = await tx.get_agent(agent_id)
    ctx.streams.refresh(agent)
    kind = p.StreamMessageType.PAUSE if paused else p.StreamMessageType.RESUME
    ctx.streams.push(agent_id, p.StreamMessage(type=kind, reason="by an operator"))
    return agent_out(agent)


@router.post("/agents/{agent_id}/pause", response_model=p.AgentOut)
async def pause_agent(agent_id: str, request: Request) -> p.AgentOut:
    """Take no new jobs until resumed; a running job goes on."""
    return await _set_paused(request, agent_id, True)


@router.post("/agents/{agent_id}/resume", response_model=p.AgentOut)
async def resume_agent(agent_id: str, request: Request) -> p.AgentOut:
    return await _set_paused(request, agent_id, False)


@router.post("/agents/{agent_id}/stop", response_model=p.AgentOut)
async def stop_agent(
    agent_id: str, request: Request, body: p.AgentControl | None = None
) -> p.AgentOut:
    """Disconnect the agent: gracefully after its running job, or (`force`) canceling it."""
    ctx = context(request)
    agent = await _live_agent(ctx, agent_id)
    if body is not None and body.force and agent.current_job_id is not None:
        ctx.streams.push(
            agent_id,
            p.StreamMessage(
                type=p.StreamMessageType.CANCEL_JOB, job=p.JobRef(id=agent.current_job_id)
            ),
        )
        async with ctx.store.transaction() as tx:
            # Without a stream the agent sees this in its job's state within a second or two.
            await tx.transition_job(agent.current_job_id, ["accepted", "running"], "canceling")
    _order(ctx, agent_id, p.StreamMessage(type=p.StreamMessageType.DISCONNECT, reason="stop"))
    return agent_out(agent)


@router.put("/agents/{agent_id}", response_model=p.AgentOut)
async def update_agent(agent_id: str, body: p.AgentUpdate, request: Request) -> p.AgentOut:
    """Change the agent process's tags (every worker) and/or how many workers it runs."""
    ctx = context(request)
    agent = await _live_agent(ctx, agent_id)
    if body.tags is not None:
        async with ctx.store.transaction() as tx:
            siblings = await tx.process_agents(agent.process_id) if agent.process_id else [agent]
            for sibling in siblings:
                await tx.update_agent(sibling.id, tags=body.tags)
            refreshed = [await tx.get_agent(s.id) for s in siblings]
        for row in refreshed:
            ctx.streams.refresh(row)
    if body.spawn is not None and agent.process_id is None:
        raise HTTPException(409, "this agent did not say which process it belongs to")
    _order(ctx, agent_id, p.StreamMessage(type=p.StreamMessageType.UPDATE, update=body))
    async with ctx.store.transaction() as tx:
        return agent_out(await tx.get_agent(agent_id))
