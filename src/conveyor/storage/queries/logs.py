"""Log chunks, keyed by (job, byte offset): storing the same chunk twice is a no-op."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from conveyor.errors import ConflictError
from conveyor.storage import tables as t
from conveyor.storage.queries.base import QueryBase


class LogQueries(QueryBase):
    async def insert_chunk(self, job_id: str, sequence: int, offset: int, data: bytes) -> bool:
        """Store a chunk. False when the very same chunk was stored before (a retried upload).

        A different chunk at a stored offset is a ConflictError: the agent lost track of its
        own log, and silently keeping either copy would corrupt it.
        """
        insert = pg_insert if self.backend == "postgresql" else sqlite_insert
        stmt = (
            insert(t.log_chunks)
            .values(job_id=job_id, offset=offset, size=len(data), sequence=sequence, data=data)
            .on_conflict_do_nothing(index_elements=["job_id", "offset"])
        )
        result = await self.conn.execute(stmt)
        if result.rowcount:
            return True
        existing = (
            await self.conn.execute(
                select(t.log_chunks.c.size, t.log_chunks.c.data).where(
                    t.log_chunks.c.job_id == job_id, t.log_chunks.c.offset == offset
                )
            )
        ).one()
        if existing.size != len(data) or bytes(existing.data) != data:
            raise ConflictError(
                f"a different chunk of {existing.size} bytes is already stored at offset {offset}"
            )
        return False

    async def chunk_index(self, job_id: str) -> Sequence[tuple[int, int]]:
        """(offset, size) of every stored chunk, in offset order."""
        rows = await self.conn.execute(
            select(t.log_chunks.c.offset, t.log_chunks.c.size)
            .where(t.log_chunks.c.job_id == job_id)
            .order_by(t.log_chunks.c.offset)
        )
        return [(int(r.offset), int(r.size)) for r in rows]

    async def read_chunks(self, job_id: str, offsets: Sequence[int]) -> list[bytes]:
        rows = await self.conn.execute(
            select(t.log_chunks.c.offset, t.log_chunks.c.data)
            .where(t.log_chunks.c.job_id == job_id, t.log_chunks.c.offset.in_(list(offsets)))
            .order_by(t.log_chunks.c.offset)
        )
        return [bytes(r.data) for r in rows]
