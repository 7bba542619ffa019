"""The ping loop: ask the server for work every interval, plus uniform jitter in [0, interval).

The first ping waits only the jitter (so a fleet started together does not ping together).
No pings while a job runs; after a job the next ping goes out at once. Each ping, and the job it
brings, happens while holding the baton: while the stream is healthy the stream side holds it
and the ping loop waits.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import anyio
import httpx

from conveyor import protocol as p
from conveyor.agent.baton import Baton
from conveyor.client import AgentClient
from conveyor.errors import APIError, is_retryable

log = logging.getLogger("conveyor.agent")

HOLDER = "ping"


class PingLoop:
    def __init__(
        self,
        client: AgentClient,
        interval: float,
        on_job: Callable[[str], Awaitable[None]],
        *,
        name: str,
        baton: Baton | None = None,
        on_update: Callable[[p.AgentUpdate], None] | None = None,
    ):
        self._client = client
        self._interval = interval
        self._on_job = on_job
        self._name = name
        self._baton = baton or Baton()
        self._on_update = on_update
        self._paused = False
        self.status = "starting"
        self._stopping = anyio.Event()
        self._wait_scope: anyio.CancelScope | None = None

    def stop(self) -> None:
        """Stop asking for work; a running job is left to finish."""
        self._stopping.set()
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def _wait(self, delay: float) -> None:
        self.status = f"next ping in {delay:.1f}s"
        with anyio.CancelScope() as self._wait_scope:
            await anyio.sleep(delay)
        self._wait_scope = None

    async def run(self) -> bool:
        """Returns when stopped (False) or when the server says to disconnect (True)."""
        delay = random.uniform(0, self._interval)
        while not self._stopping.is_set():
            await self._wait(delay)
            if self._stopping.is_set():
                return False
            self.status = "waiting: the stream is serving"
            with anyio.CancelScope() as self._wait_scope:
                await self._baton.acquire(HOLDER)
            self._wait_scope = None
            if self._stopping.is_set():
                if self._baton.holder == HOLDER:
                    self._baton.release(HOLDER)
                return False
            try:
                outcome = await self._ping_once()
            finally:
                self._baton.release(HOLDER)
            if outcome == "disconnect":
                return True
            delay = 0 if outcome == "job" else self._interval + random.uniform(0, self._interval)
        return False

    async def _ping_once(self) -> str:
        self.status = "pinging"
        try:
            response = await self._client.ping()
        except (httpx.TransportError, APIError) as exc:
            if not is_retryable(exc):
                self.status = f"refused: {exc}"
                raise
            log.warning("%s: ping failed: %s", self._name, exc)
            self.status = f"last ping failed: {exc}"
            return "error"
        if response.update is not None and self._on_update is not None:
            self._on_update(response.update)
        if response.action == p.PingAction.DISCONNECT:
            log.info("%s: the server asked this agent to disconnect", self._name)
            return "disconnect"
        paused = response.action == p.PingAction.PAUSE
        if paused != self._paused:
            self._paused = paused
            log.info("%s: %s", self._name, "paused by the server" if paused else "resumed")
        if paused:
            self.status = "paused by the server"
            return "idle"
        if response.job is None:
            return "idle"
        self.status = f"running job {response.job.id}"
        await self._on_job(response.job.id)
        return "job"
