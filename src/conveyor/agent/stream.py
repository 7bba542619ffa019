"""The stream loop: keeps the worker's `GET /agent/v1/stream` open and feeds the debouncer.

The stream is healthy from its first message until it fails: an error, the server closing it,
or no message (not even a keepalive) for three keepalive intervals. Then it reconnects after a
jittered wait inside a window that grows 1 s → 64 s and resets on the next good message. A
refusal (401/403/404/405/501) is final: in `auto` mode the ping loop serves from then on, in
`stream-only` mode the worker stops with an error.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import anyio
import httpx
from pydantic import ValidationError

from conveyor import protocol as p
from conveyor.agent.debouncer import Debouncer
from conveyor.client import AgentClient
from conveyor.errors import APIError, ConveyorError

log = logging.getLogger("conveyor.agent")

MAX_WINDOW_S = 64.0
_FINAL = frozenset({401, 403, 404, 405, 501})


class StreamHealth:
    """Whether the stream can be trusted to bring work right now, and changes to that."""

    def __init__(self) -> None:
        self.healthy = False
        self.gave_up = False
        self._changed = anyio.Event()

    def set(self, healthy: bool) -> None:
        if healthy != self.healthy:
            self.healthy = healthy
            self._changed.set()
            self._changed = anyio.Event()

    def give_up(self) -> None:
        self.gave_up = True
        self.set(False)
        self._changed.set()  # wake waiters for "healthy" so they see it never will be

    async def wait_until(self, healthy: bool) -> None:
        while self.healthy != healthy:
            if healthy and self.gave_up:
                await anyio.sleep_forever()
            await self._changed.wait()


class StreamLoop:
    def __init__(
        self,
        client: AgentClient,
        debouncer: Debouncer,
        health: StreamHealth,
        *,
        name: str,
        stream_only: bool,
        on_cancel: Callable[[str], None],
        on_update: Callable[[p.AgentUpdate], None] | None = None,
        on_spec: Callable[[p.JobSpec], None] | None = None,
    ) -> None:
        self._client = client
        self._on_spec = on_spec
        self._debouncer = debouncer
        self._health = health
        self._name = name
        self._stream_only = stream_only
        self._on_cancel = on_cancel
        self._on_update = on_update
        self.status = "connecting"

    def _handle(self, message: p.StreamMessage) -> None:
        kind = message.type
        if kind == p.StreamMessageType.JOB_ASSIGNED and message.job is not None:
            if message.spec is not None and self._on_spec is not None:
                self._on_spec(message.spec)  # the job can start without an accept
            self._debouncer.job(message.job.id)
        elif kind == p.StreamMessageType.CANCEL_JOB and message.job is not None:
            self._on_cancel(message.job.id)
        elif kind == p.StreamMessageType.PAUSE:
            self._debouncer.pause()
        elif kind == p.StreamMessageType.RESUME:
            self._debouncer.resume()
        elif kind == p.StreamMessageType.DISCONNECT:
            self._debouncer.disconnect()
        elif (
            kind == p.StreamMessageType.UPDATE
            and message.update is not None
            and self._on_update is not None
        ):
            self._on_update(message.update)

    async def run(self) -> None:
        attempts = 0
        while True:
            try:
                async with self._client.stream() as messages:
                    async for message in messages:
                        if attempts:
                            log.info("%s: stream connected", self._name)
                        attempts = 0
                        self._health.set(True)
                        self.status = f"connected (last message: {message.type.value})"
                        self._handle(message)
                problem = "the server closed the stream"
            except APIError as exc:
                if exc.status in _FINAL:
                    self._health.give_up()
                    self.status = f"refused: {exc}"
                    if self._stream_only:
                        raise ConveyorError(f"the server refused the stream: {exc}") from exc
                    log.warning("%s: stream refused (%s); pinging from now on", self._name, exc)
                    return
                problem = str(exc)
            except (httpx.RequestError, httpx.StreamError, ValidationError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self._health.set(False)
            window = min(MAX_WINDOW_S, 2.0**attempts)
            attempts += 1
            delay = random.uniform(0, window)
            log.warning("%s: stream lost (%s); reconnecting in %.1fs", self._name, problem, delay)
            self.status = f"reconnecting in {delay:.1f}s after: {problem}"
            await anyio.sleep(delay)
