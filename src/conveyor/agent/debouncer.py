"""The debouncer: keeps draining the stream while a job runs, and turns the messages into at
most one next action.

- `disconnect` is sticky: once seen, it is the next action, whatever follows.
- Of `pause` and `resume`, the latest wins (pause then resume = never paused).
- Assigned jobs queue in order; a job is handed out only while not paused.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Literal

import anyio

ActionKind = Literal["disconnect", "pause", "resume", "job"]


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    job_id: str | None = None


class Debouncer:
    def __init__(self) -> None:
        self._disconnect = False
        # What the latest message asks for, and what the agent has acted on: a pause followed
        # by a resume before anything acted on it leaves them equal (never paused).
        self._want_paused = False
        self._acted_paused = False
        self._jobs: collections.deque[str] = collections.deque()
        self._changed = anyio.Event()

    @property
    def paused(self) -> bool:
        return self._acted_paused

    def disconnect(self) -> None:
        self._disconnect = True
        self._changed.set()

    def pause(self) -> None:
        self._want_paused = True
        self._changed.set()

    def resume(self) -> None:
        self._want_paused = False
        self._changed.set()

    def job(self, job_id: str) -> None:
        if job_id not in self._jobs:
            self._jobs.append(job_id)
        self._changed.set()

    def next_nowait(self) -> Action | None:
        if self._disconnect:
            return Action("disconnect")
        if self._want_paused != self._acted_paused:
            self._acted_paused = self._want_paused
            return Action("pause" if self._acted_paused else "resume")
        if not self._acted_paused and self._jobs:
            return Action("job", self._jobs.popleft())
        return None

    async def next(self) -> Action:
        while True:
            action = self.next_nowait()
            if action is not None:
                return action
            self._changed = anyio.Event()
            await self._changed.wait()
