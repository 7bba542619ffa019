"""The server's SQLite connection: small statements run where they are awaited, large ones in
aiosqlite's thread, and each of those is one trip to it.

aiosqlite runs every call on the sqlite3 connection in a thread of its own; each call is a
round trip (a queue, a thread woken, the event loop woken). On this server's small statements
(a row by its key, a compare-and-set) SQLite itself takes tens of microseconds and the trip
costs more than that, on an idle machine much more: both wake-ups wait for a sleeping CPU.
Jobs are dispatched through a few dozen statements, so the trips were most of a job's dispatch
time. A statement whose parameters carry more than `INLINE_MAX_BYTES` (a log chunk) copies and
writes that much; it still goes to the thread, so the event loop serves other requests
meanwhile, as does the commit of a transaction that ran one.

Blocking the event loop on a small statement is safe because nothing it could wait for is
ours: the server has one connection (one transaction at a time), and the checkpoint loop's
checkpoints are PASSIVE (they never hold a lock a writer waits for). What it does not cover:
another process writing the same database file (a second server on one data directory, an
operator's sqlite3 shell holding a write transaction) now stalls the whole loop for up to the
busy timeout, not one request; a commit that finds the log past the writer's checkpoint
ceiling (the background loop fell that far behind) checkpoints on the loop; a read of large
rows (a batch of log chunks) copies them on the loop.

SQLAlchemy's aiosqlite adapter made four trips per statement: open a cursor, execute, fetch
the rows, close the cursor. `OneTripConnection.cursor()` gives a cursor whose `execute` runs
the statement, fetches its rows and closes the sqlite3 cursor in one go, and whose other
methods answer from what that brought back. The rows of a statement are all fetched at once:
fine for this server's queries, which are bounded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import aiosqlite

__all__ = ["INLINE_MAX_BYTES", "OneTripConnection", "connect"]

INLINE_MAX_BYTES = 64 * 1024
"""Parameters larger than this (all of a statement's together) send it to the thread."""

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


def _parameters_size(parameters: Any, many: bool) -> int:
    rows = parameters if many else (parameters,)
    size = 0
    for row in rows:
        values = row.values() if isinstance(row, dict) else row or ()
        for value in values:
            if isinstance(value, bytes | str | bytearray | memoryview):
                size += len(value)
    return size


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
        connection = self._connection
        conn = connection._conn
        if many and not isinstance(parameters, list | tuple):
            parameters = list(parameters)  # counted before it is run: not used up by counting
        if _parameters_size(parameters, many) <= INLINE_MAX_BYTES:
            outcome = _run(conn, sql, parameters, many)
        else:
            connection.large_in_transaction = True
            outcome = await connection._execute(_run, conn, sql, parameters, many)  # type: ignore[no-untyped-call]
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
    large_in_transaction = False
    """A statement of this transaction went to the thread: so does its commit, which may
    write (or checkpoint) that much more."""

    def cursor(self) -> _Cursor:  # type: ignore[override]
        return _Cursor(self)

    async def commit(self) -> None:
        if self.large_in_transaction:
            self.large_in_transaction = False
            await super().commit()
        else:
            self._conn.commit()

    async def rollback(self) -> None:
        self.large_in_transaction = False
        self._conn.rollback()


def connect(database: str, **kwargs: Any) -> Callable[[], OneTripConnection]:
    """An `async_creator` for SQLAlchemy: `sqlite3.connect(database, **kwargs)` behind a
    `OneTripConnection` (awaited by SQLAlchemy, which starts its thread)."""

    # Made in aiosqlite's thread, used from the event loop's too (never at once).
    kwargs = {**kwargs, "check_same_thread": False}

    def create() -> OneTripConnection:
        conn = OneTripConnection(lambda: sqlite3.connect(database, **kwargs), iter_chunk_size=64)
        # As SQLAlchemy does for aiosqlite: a connection left open must not keep the process.
        conn._thread.daemon = True
        return conn

    return create
