"""An aiosqlite connection whose statements each take one trip to its thread.

aiosqlite runs every call on the sqlite3 connection in a thread of its own; each call is a
round trip (a queue, a thread woken, the event loop woken), a fraction of a millisecond on a
busy loop. SQLAlchemy's aiosqlite adapter makes four of them per statement: open a cursor,
execute, fetch the rows, close the cursor. Jobs are dispatched through a few dozen statements,
so those trips were most of a job's dispatch time.

`OneTripConnection.cursor()` gives a cursor whose `execute` runs the statement, fetches its
rows and closes the sqlite3 cursor in one trip, and whose other methods answer from what that
trip brought back. Commit, rollback and the rest are aiosqlite's own. The rows of a statement
are all fetched at once: fine for this server's queries, which are bounded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import aiosqlite

__all__ = ["OneTripConnection", "connect"]

_Description = tuple[tuple[str, None, None, None, None, None, None], ...] | None
_Outcome = tuple[_Description, int, int | None, list[Any]]


def _run(conn: sqlite3.Connection, sql: str, parameters: Any, many: bool) -> _Outcome:
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, () if parameters is None else parameters)
        rows = cursor.fetchall() if cursor.description else []
        # rowcount after the rows: for RETURNING it counts them as they are fetched.
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class _Cursor:
    """What SQLAlchemy's adapter uses of an aiosqlite cursor, one trip per statement."""

    def __init__(self, connection: OneTripConnection) -> None:
        self._connection = connection
        self.description: _Description = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1
        self._rows: list[Any] = []

    async def __aenter__(self) -> _Cursor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, sql: str, parameters: Any, many: bool) -> _Cursor:
        conn = self._connection._conn
        outcome = await self._connection._execute(_run, conn, sql, parameters, many)  # type: ignore[no-untyped-call]
        self.description, self.rowcount, self.lastrowid, self._rows = outcome
        return self

    async def execute(self, sql: str, parameters: Any = None) -> _Cursor:
        return await self._call(sql, parameters, False)

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> _Cursor:
        return await self._call(sql, parameters, True)

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        n = self.arraysize if size is None else size
        taken, self._rows = self._rows[:n], self._rows[n:]
        return taken

    async def fetchall(self) -> Sequence[Any]:
        taken, self._rows = self._rows, []
        return taken

    async def close(self) -> None:
        self._rows = []


class OneTripConnection(aiosqlite.Connection):
    def cursor(self) -> _Cursor:  # type: ignore[override]
        return _Cursor(self)


def connect(database: str, **kwargs: Any) -> Callable[[], OneTripConnection]:
    """An `async_creator` for SQLAlchemy: `sqlite3.connect(database, **kwargs)` behind a
    `OneTripConnection` (awaited by SQLAlchemy, which starts its thread)."""

    def create() -> OneTripConnection:
        conn = OneTripConnection(lambda: sqlite3.connect(database, **kwargs), iter_chunk_size=64)
        # As SQLAlchemy does for aiosqlite: a connection left open must not keep the process.
        conn._thread.daemon = True
        return conn

    return create
