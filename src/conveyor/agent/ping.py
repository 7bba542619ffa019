"""The ping loop: ask the server for work every interval, plus uniform jitter in [0, interval).

The first ping waits only the jitter (so a fleet started together does not ping together).
No pings while a job runs; after a job the next ping goes out at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import anyio
import httpx

from conveyor import protocol as p
from conveyor.client import AgentClient
from conveyor.errors import APIError, is_retryable

log = logging.getLogger("conveyor.agent")


class PingLoop:
    def __init__(
        self,
        client: AgentClient,
        interval: float,
        on_job: Callable[[str], Awaitable[None]],
        *,
        name: str,
        disconnect_after_job: bool = False,
    ):
        self._client = client
        self._interval = interval
        self._on_job = on_job
        self._name = name
        self._disconnect_after_job = disconnect_after_job
        self._stopping = anyio.Event()
        self._wait_scope: anyio.CancelScope | None = None

    def stop(self) -> None:
        """Stop asking for work; a running job is left to finish."""
        self._stopping.set()
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def _wait(self, delay: float) -> None:
        with anyio.CancelScope() as self._wait_scope:
            await anyio.sleep(delay)
        self._wait_scope = None

    async def run(self) -> None:
        """Returns when stopped or when the server says to disconnect."""
        delay = random.uniform(0, self._interval)
        while not self._stopping.is_set():
            await self._wait(delay)
            if self._stopping.is_set():
                return
            delay = self._interval + random.uniform(0, self._interval)
            try:
                response = await self._client.ping()
            except (httpx.TransportError, APIError) as exc:
                if not is_retryable(exc):
                    raise
                log.warning("%s: ping failed: %s", self._name, exc)
                continue
            if response.action == p.PingAction.DISCONNECT:
                log.info("%s: the server asked this agent to disconnect", self._name)
                return
            if response.job is not None:
                await self._on_job(response.job.id)
                if self._disconnect_after_job:
                    log.info("%s: disconnecting after one job, as configured", self._name)
                    return
                delay = 0
