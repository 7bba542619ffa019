"""The action loop: while the stream is healthy it holds the baton and carries out, one at a
time, what the debouncer hands it — run a job, pause, resume, disconnect."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from conveyor.agent.baton import Baton
from conveyor.agent.debouncer import Action, Debouncer
from conveyor.agent.stream import StreamHealth

log = logging.getLogger("conveyor.agent")

HOLDER = "stream"


class ActionLoop:
    def __init__(
        self,
        debouncer: Debouncer,
        health: StreamHealth,
        baton: Baton,
        on_job: Callable[[str], Awaitable[None]],
        *,
        name: str,
    ) -> None:
        self._debouncer = debouncer
        self._health = health
        self._baton = baton
        self._on_job = on_job
        self._name = name
        self._stopping = False
        self._idle_scope: anyio.CancelScope | None = None

    def stop(self) -> None:
        """Take no more actions; one in flight (a job) is left to finish."""
        self._stopping = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def run(self) -> bool:
        """True when the server asked to disconnect; False when stopped or the stream gave up."""
        while not self._stopping:
            with anyio.CancelScope() as self._idle_scope:
                await self._health.wait_until(True)
                await self._baton.acquire(HOLDER)
            self._idle_scope = None
            if self._stopping:
                if self._baton.holder == HOLDER:
                    self._baton.release(HOLDER)
                return False
            try:
                while self._health.healthy and not self._stopping:
                    action = await self._next_while_healthy()
                    if action is None:
                        break
                    if await self._act(action):
                        return True
            finally:
                self._baton.release(HOLDER)
        return False

    async def _next_while_healthy(self) -> Action | None:
        """The next action; None if the stream turns unhealthy (or we stop) first."""
        result: list[Action] = []
        with anyio.CancelScope() as self._idle_scope:
            async with anyio.create_task_group() as tg:

                async def unhealthy() -> None:
                    await self._health.wait_until(False)
                    tg.cancel_scope.cancel()

                tg.start_soon(unhealthy)
                result.append(await self._debouncer.next())
                tg.cancel_scope.cancel()
        self._idle_scope = None
        return result[0] if result else None

    async def _act(self, action: Action) -> bool:
        if action.kind == "disconnect":
            log.info("%s: the server asked this agent to disconnect", self._name)
            return True
        if action.kind == "pause":
            log.info("%s: paused by the server", self._name)
        elif action.kind == "resume":
            log.info("%s: resumed", self._name)
        elif action.job_id is not None:
            await self._on_job(action.job_id)
        return False
