"""The baton: who may act on the server's behalf right now — the stream side or the ping loop.

One holder at a time. The stream side holds it while the stream is healthy, so the ping loop
waits; when the stream turns unhealthy the stream side lets go once its action in flight is
done, and the ping loop takes it for each ping. The ping loop always lets go after an action,
so a recovered stream gets it back between pings — never in the middle of a job.
"""

from __future__ import annotations

import anyio


class Baton:
    def __init__(self) -> None:
        self._slot = anyio.Semaphore(1)
        self.holder: str | None = None

    async def acquire(self, holder: str) -> None:
        await self._slot.acquire()
        self.holder = holder

    def try_acquire(self, holder: str) -> bool:
        try:
            self._slot.acquire_nowait()
        except anyio.WouldBlock:
            return False
        self.holder = holder
        return True

    def release(self, holder: str) -> None:
        if self.holder != holder:
            raise RuntimeError(f"{holder} released the baton held by {self.holder}")
        self.holder = None
        self._slot.release()
