"""In-process change notification: who waits for a build to change is woken when it does.

A waiter re-reads the database on waking and at least once a `slice_s`, so a change made by
another server replica sharing the same PostgreSQL is seen too, only later.
"""

from __future__ import annotations

import anyio


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, anyio.Event] = {}

    def notify(self, key: str) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def subscribe(self, key: str) -> anyio.Event:
        """Take the event *before* reading state, so a change in between is not missed."""
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = anyio.Event()
        return event
