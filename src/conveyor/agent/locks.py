"""Machine-scope locks: what `conveyor lock acquire / release / get / do / done` mean, for the
jobs of one agent process, on top of the host-wide lock directory (`hostlocks`).

A key is one lock with a value, as in Buildkite's agent:

    ""         free
    <token>    held: `acquire` returned the token, and `release KEY TOKEN` lets it go
    "doing"    a `do` caller was told "do" and is doing the work; `done` ends it
    "done"     the work is done; every later `do` returns "done" at once

Holding a key means holding its flock, so a key is held by one job at a time across every agent
process of the host. Inside one process, the jobs waiting for a key queue here (first come,
first served) and only the first of them waits for the flock.

Each job is an owner. When its job ends, an owner's keys are let go: a lock it did not release
becomes free, and work it was doing (`do` without `done`) is left undone, so the next `do`
caller is told "do". Buildkite keeps such locks until the agent stops; here a failed job cannot
wedge every later job of the host.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

import anyio

from conveyor.agent.hostlocks import HostLocks
from conveyor.errors import ConveyorError

DOING = "doing"
DONE = "done"


class LockError(ConveyorError):
    """A lock request that cannot be granted; the message is for the job's log."""


@dataclass
class _Held:
    fd: int  # holds the key's flock
    owner: Hashable
    token: str | None  # None: a `do` in progress


class _Key:
    def __init__(self) -> None:
        # The queue of this process's jobs for the key. A semaphore rather than a lock: it is
        # released by whichever request lets the key go, not by the one that took it.
        self.slot = anyio.Semaphore(1)
        self.held: _Held | None = None


def _seconds(limit: float) -> str:
    return f"{limit:g}s"


class LockTable:
    def __init__(self, host: HostLocks):
        self._host = host
        self.host_dir = host.path
        self._keys: dict[str, _Key] = {}
        self._open: set[Hashable] = set()

    def open(self, owner: Hashable) -> None:
        """A job starts: it may hold keys from now on."""
        self._open.add(owner)

    async def close(self, owner: Hashable) -> None:
        """Its job has ended: let go of every key it holds; a grant still on its way is let go
        as soon as it arrives."""
        self._open.discard(owner)
        for key, entry in list(self._keys.items()):
            if entry.held is not None and entry.held.owner == owner:
                await self._let_go(key, entry, "")

    async def acquire(self, key: str, owner: Hashable, max_wait: float | None = None) -> str:
        """Wait until the key is free, take it, and return the token that releases it."""
        token = secrets.token_hex(16)
        if not await self._take_and_set(key, owner, max_wait, token):
            raise LockError(
                f"lock {key!r} is a `lock do` key whose work is done: "
                "`lock acquire` cannot take it (use another key)"
            )
        return token

    async def release(self, key: str, token: str) -> None:
        entry = self._keys.get(key)
        held = entry.held if entry is not None else None
        if entry is None or held is None or held.token is None:
            raise LockError(await self._why_not_held(key, held))
        if not hmac.compare_digest(held.token.encode(), token.encode("utf-8", "surrogatepass")):
            raise LockError(f"lock {key!r} is held with another token")
        await self._let_go(key, entry, "")

    async def get(self, key: str) -> str:
        """The key's value now: "", a token, "doing" or "done"."""
        entry = self._keys.get(key)
        if entry is not None and entry.held is not None:
            return entry.held.token or DOING
        locked, value = await self._host.probe(key)
        if locked:
            return value
        # Nobody holds the key: a token or "doing" left behind is from a process that died.
        return DONE if value == DONE else ""

    async def do(
        self, key: str, owner: Hashable, max_wait: float | None = None
    ) -> Literal["do", "done"]:
        """Whether the caller does the work ("do", then it calls `done`) or skips it ("done":
        the work is done, after waiting for the job doing it, if one is)."""
        # "done" never changes while agents run: no need to queue to see it.
        if await self._host.read(key) == DONE:
            return "done"
        return "do" if await self._take_and_set(key, owner, max_wait, None) else "done"

    async def done(self, key: str, owner: Hashable) -> None:
        entry = self._keys.get(key)
        held = entry.held if entry is not None else None
        if entry is None or held is None or held.token is not None:
            raise LockError(await self._why_not_doing(key, held))
        if held.owner != owner:
            raise LockError(
                f"the work for {key!r} is being done by another job: only the job that was "
                "told `do` calls `lock done`"
            )
        await self._let_go(key, entry, DONE)

    async def drop(self, key: str, owner: Hashable) -> None:
        """Let go of a key just granted to `owner` whose answer never reached the job."""
        entry = self._keys.get(key)
        if entry is not None and entry.held is not None and entry.held.owner == owner:
            await self._let_go(key, entry, "")

    async def shutdown(self) -> None:
        """The lock service stops: every flock goes (values stay; without a flock they are
        read as free)."""
        with anyio.CancelScope(shield=True):
            for key, entry in list(self._keys.items()):
                if entry.held is not None:
                    await self._let_go(key, entry, None)

    async def _take_and_set(
        self, key: str, owner: Hashable, max_wait: float | None, token: str | None
    ) -> bool:
        """Hold the key for `owner`, as a lock (`token`) or as work being done (None). False,
        holding nothing, if the key's work is done."""
        entry, fd = await self._take(key, max_wait)
        # The flock is ours now: finish the bookkeeping whatever happens to the caller.
        with anyio.CancelScope(shield=True):
            try:
                value = await self._host.read(key)
            except BaseException:
                await self._unlock(key, entry, fd, None)
                raise
            if value == DONE:
                await self._unlock(key, entry, fd, None)
                return False
            if owner not in self._open:
                await self._unlock(key, entry, fd, None)
                raise LockError("refused: the job this request came from has finished")
            entry.held = _Held(fd, owner, token)
            try:
                await self._host.write(key, token or DOING)
            except BaseException:
                await self._let_go(key, entry, "")
                raise
        return True

    async def _take(self, key: str, max_wait: float | None) -> tuple[_Key, int]:
        """Queue for the key in this process, then wait for its flock."""
        entry = self._keys.setdefault(key, _Key())
        try:
            with anyio.fail_after(max_wait):
                await entry.slot.acquire()
                try:
                    fd = await self._host.lock(key)
                except BaseException:
                    entry.slot.release()
                    raise
        except TimeoutError:
            self._prune(key, entry)
            assert max_wait is not None
            raise LockError(
                f"timed out after {_seconds(max_wait)} waiting for lock {key!r}"
            ) from None
        except BaseException:
            self._prune(key, entry)
            raise
        return entry, fd

    async def _let_go(self, key: str, entry: _Key, value: str | None) -> None:
        held = entry.held
        assert held is not None
        # Cleared first: a second release of the same key finds it free, not half released.
        entry.held = None
        await self._unlock(key, entry, held.fd, value)

    async def _unlock(self, key: str, entry: _Key, fd: int, value: str | None) -> None:
        try:
            await self._host.unlock(key, fd, value)
        finally:
            entry.slot.release()
            self._prune(key, entry)

    def _prune(self, key: str, entry: _Key) -> None:
        """Forget a key nobody holds or waits for, so the table does not grow forever."""
        idle = entry.held is None and entry.slot.value == 1
        if idle and entry.slot.statistics().tasks_waiting == 0 and self._keys.get(key) is entry:
            del self._keys[key]

    async def _why_not_held(self, key: str, held: _Held | None) -> str:
        if held is not None:
            return (
                f"lock {key!r} is a `lock do` key whose work is in progress: "
                "end it with `lock done`"
            )
        locked, value = await self._host.probe(key)
        if locked and value == DOING:
            return (
                f"lock {key!r} is a `lock do` key whose work is in progress "
                "in another agent process"
            )
        if locked:
            return (
                f"lock {key!r} is held by a job of another agent process on this host: "
                "only a job of that agent can release it"
            )
        if value == DONE:
            return (
                f"lock {key!r} is a `lock do` key whose work is done: there is nothing to release"
            )
        return f"lock {key!r} is not held"

    async def _why_not_doing(self, key: str, held: _Held | None) -> str:
        if held is not None:
            return f"lock {key!r} was taken with `lock acquire`: release it with `lock release`"
        locked, value = await self._host.probe(key)
        if locked and value == DOING:
            return f"the work for {key!r} is being done by a job of another agent process"
        if locked:
            return f"lock {key!r} is held by a job of another agent process on this host"
        if value == DONE:
            return f"the work for {key!r} is already done"
        return f"no work is in progress for {key!r}: call `conveyor lock do {key}` first"
