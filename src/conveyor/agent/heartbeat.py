"""The heartbeat loop: tells the server this worker is alive, also while a job finishes."""

from __future__ import annotations

import logging

import anyio
import httpx

from conveyor.client import AgentClient
from conveyor.errors import APIError

log = logging.getLogger("conveyor.agent")


class HeartbeatLoop:
    def __init__(self, client: AgentClient, interval: float, name: str):
        self._client = client
        self._interval = interval
        self._name = name
        self.status = f"every {interval:g}s; none sent yet"

    async def run(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            try:
                answer = await self._client.heartbeat()
                self.status = f"every {self._interval:g}s; last {answer.received_at:%H:%M:%S}Z"
            except (httpx.TransportError, APIError) as exc:
                # The retries are spent; the next beat tries again. The server decides when an
                # agent is lost, not the agent.
                log.warning("%s: heartbeat failed: %s", self._name, exc)
                self.status = f"every {self._interval:g}s; last failed: {exc}"
