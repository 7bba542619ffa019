"""`Store`: one transaction per `async with store.transaction() as tx:` block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from conveyor.storage.engine import Database
from conveyor.storage.queries.agents import AgentQueries
from conveyor.storage.queries.annotations import AnnotationQueries
from conveyor.storage.queries.artifacts import ArtifactQueries
from conveyor.storage.queries.builds import BuildQueries
from conveyor.storage.queries.jobs import JobQueries
from conveyor.storage.queries.logs import LogQueries
from conveyor.storage.queries.tokens import TokenQueries


class Tx(
    TokenQueries,
    AgentQueries,
    BuildQueries,
    JobQueries,
    LogQueries,
    AnnotationQueries,
    ArtifactQueries,
):
    """Every query, bound to one open transaction."""


class Store:
    def __init__(self, db: Database):
        self.db = db

    @property
    def backend(self) -> str:
        return self.db.backend

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """Commit when the block ends normally, roll back when it raises."""
        async with self.db.engine.begin() as conn:
            yield Tx(conn, self.db.backend)

    async def close(self) -> None:
        await self.db.close()
