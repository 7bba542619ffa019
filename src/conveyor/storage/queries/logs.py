"""Log chunks, keyed by (job, byte offset): storing the same chunk twice is a no-op."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import BindParameter, Table, bindparam, exists, select, update
from sqlalchemy.dialects.postgresql import dml as pg_dml
from sqlalchemy.dialects.sqlite import dml as sqlite_dml
from sqlalchemy.sql.dml import Insert

from conveyor.errors import ConflictError, InvalidStateError, NotFoundError
from conveyor.storage import tables as t
from conveyor.storage.queries.base import QueryBase

_COLUMNS = ("job_id", "offset", "size", "sequence", "data")


def _values() -> list[BindParameter[object]]:
    c = t.log_chunks.c
    return [bindparam(name, type_=c[name].type) for name in _COLUMNS]


def _insert(insert: Callable[[Table], Insert], *, while_in_state: bool) -> Insert:
    """INSERT :values ON CONFLICT (job, offset) DO NOTHING; `while_in_state`: INSERT … SELECT
    :values WHERE the job is in one of :states.

    Built once, not per chunk: a log arrives as hundreds of chunks a second, and constructing
    the same statement for each is Python work on the server's event loop. With the state
    check in the insert itself, a chunk of a live job is stored by one statement, and the
    job's row is read only when nothing was stored (a retry, a conflict, or an ended job).
    """
    stmt = insert(t.log_chunks)
    if while_in_state:
        live = exists().where(
            t.jobs.c.id == bindparam("job_id"),
            t.jobs.c.state.in_(bindparam("states", expanding=True)),
        )
        stmt = stmt.from_select(list(_COLUMNS), select(*_values()).where(live))
    else:
        stmt = stmt.values(dict(zip(_COLUMNS, _values(), strict=True)))
    assert isinstance(stmt, pg_dml.Insert | sqlite_dml.Insert)
    return stmt.on_conflict_do_nothing(index_elements=["job_id", "offset"])


_INSERTS = {
    (backend, while_in_state): _insert(insert, while_in_state=while_in_state)
    for backend, insert in (("postgresql", pg_dml.insert), ("sqlite", sqlite_dml.insert))
    for while_in_state in (False, True)
}
_COUNT = (
    update(t.jobs)
    .where(t.jobs.c.id == bindparam("job_id"))
    .values(log_size=t.jobs.c.log_size + bindparam("size", type_=t.jobs.c.log_size.type))
)


class LogQueries(QueryBase):
    async def insert_chunk(
        self,
        job_id: str,
        sequence: int,
        offset: int,
        data: bytes | bytearray,
        *,
        job_states: Sequence[str] | None = None,
    ) -> bool:
        """Store a chunk and add its size to the job's `log_size`. False when the very same
        chunk was stored before (a retried upload): nothing is stored or counted again.

        A different chunk at a stored offset is a ConflictError: the agent lost track of its
        own log, and silently keeping either copy would corrupt it. With `job_states`, the
        chunk is stored only while the job is in one of them (InvalidStateError otherwise,
        even for a chunk stored before: an ended job's log is closed).
        """
        params: dict[str, Any] = {
            "job_id": job_id, "offset": offset, "size": len(data), "sequence": sequence,
            "data": data,
        }  # fmt: skip
        if job_states is not None:
            params["states"] = list(job_states)
        stmt = _INSERTS[self.backend, job_states is not None]
        result = await self.conn.execute(stmt, params)
        if result.rowcount:
            await self.conn.execute(_COUNT, {"job_id": job_id, "size": len(data)})
            return True
        state = (
            await self.conn.execute(select(t.jobs.c.state).where(t.jobs.c.id == job_id))
        ).scalar_one_or_none()
        if state is None:
            raise NotFoundError(f"no job {job_id}")
        if job_states is not None and state not in job_states:
            raise InvalidStateError(f"job is {state}: it takes no more log")
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
