"""The heartbeat loop: tells the server this worker is alive, also while a job finishes."""

from __future__ import annotations

import logging

import anyio
import httpx

from conveyor.client import AgentClient
from conveyor.errors import APIError

log = logging.getLogger("conveyor.agent")


async def heartbeat_loop(client: AgentClient, interval: float, name: str) -> None:
    while True:
        await anyio.sleep(interval)
        try:
            await client.heartbeat()
        except (httpx.TransportError, APIError) as exc:
            # The retries are spent; the next beat tries again. The server decides when an
            # agent is lost, not the agent.
            log.warning("%s: heartbeat failed: %s", name, exc)
