"""The store as the server uses it: every transaction keeps the server's memory in step.

A transaction records what it changed that the server also holds in memory (`TxChanges`).
Just before it commits, if it made a job runnable or freed an agent, runnable jobs are assigned
to idle streaming agents in the same transaction (`StreamHub.assign`). Once it has committed,
the token cache forgets what it revoked and learns what it created, and the assignments are
pushed. Nothing is pushed or cached from a transaction that did not commit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from conveyor.server.streams import Assigned, StreamHub
from conveyor.server.tokencache import TokenCache
from conveyor.storage import Store, Tx
from conveyor.storage.engine import Database

log = logging.getLogger("conveyor.server")


class ServerStore(Store):
    def __init__(self, db: Database, tokens: TokenCache) -> None:
        super().__init__(db)
        self.tokens = tokens
        self.hub: StreamHub | None = None

    @asynccontextmanager
    async def transaction(self, *, full_pass: bool = False) -> AsyncIterator[Tx]:
        """Commit when the block ends normally, roll back when it raises. With `full_pass`,
        assign as the pusher does (agents' busy flags re-read) whatever the block changed."""
        hub = self.hub
        assigned: list[Assigned] = []
        try:
            async with self.db.engine.begin() as conn:
                tx = Tx(conn, self.db.backend)
                yield tx
                if hub is not None and (full_pass or hub.wants_pass(tx.changes)):
                    assigned = await self._assign(tx, hub, refresh=full_pass)
        except BaseException:
            if hub is not None and assigned:
                hub.rolled_back(assigned)
            raise
        self.tokens.committed(tx.changes)
        if hub is not None:
            hub.committed(tx.changes, assigned)

    async def _assign(self, tx: Tx, hub: StreamHub, *, refresh: bool) -> list[Assigned]:
        """Assign inside `tx`. A failure here must not undo what the transaction is for (a build
        created, a job finished): on PostgreSQL the assignment runs in a savepoint that is
        rolled back alone; on SQLite (one connection, nothing else writes meanwhile) what it
        did stays, and a job assigned without being pushed is offered again after
        `reaper.ASSIGNMENT_TIMEOUT_S`. Either way the pusher makes a full pass next."""
        created = len(tx.changes.tokens_created)
        try:
            if self.db.backend == "postgresql":
                async with tx.conn.begin_nested():
                    return await hub.assign(tx, refresh=refresh)
            return await hub.assign(tx, refresh=refresh)
        except Exception:
            log.exception("assigning runnable jobs failed: the pusher tries again")
            # A token made for a push that will not happen is not one to remember.
            del tx.changes.tokens_created[created:]
            hub.sweep()
            return []
