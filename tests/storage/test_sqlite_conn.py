"""The SQLite connection the server uses: SQLAlchemy gets what it expects of a statement's
result, and each statement is one trip to the connection's thread."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from conveyor.storage import open_database
from conveyor.storage.engine import sqlite_url
from conveyor.storage.sqlite_conn import OneTripConnection

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    db = await open_database(sqlite_url(tmp_path / "conveyor.db"), migrate=False)
    async with db.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"))
    try:
        yield db.engine
    finally:
        await db.close()


async def test_results_are_what_sqlalchemy_expects(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
        assert inserted.rowcount == 1 and inserted.lastrowid == 1
        many = await conn.execute(
            text("INSERT INTO t (name) VALUES (:name)"), [{"name": "b"}, {"name": "c"}]
        )
        assert many.rowcount == 2
        rows = (await conn.execute(text("SELECT id, name FROM t ORDER BY id"))).all()
        assert [tuple(r) for r in rows] == [(1, "a"), (2, "b"), (3, "c")]
        assert (await conn.execute(text("SELECT name FROM t WHERE id = 9"))).first() is None
        updated = await conn.execute(text("UPDATE t SET name = name || '!' WHERE id > 1"))
        assert updated.rowcount == 2
        returned = await conn.execute(
            text("UPDATE t SET name = name || '?' WHERE id IN (1, 3) RETURNING id")
        )
        assert sorted(r.id for r in returned) == [1, 3]
        result = await conn.execute(text("SELECT id, name FROM t WHERE id = 2"))
        assert list(result.keys()) == ["id", "name"]
        assert result.one().name == "b!"


async def test_errors_are_sqlalchemys_and_roll_back(engine: AsyncEngine) -> None:
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (name) VALUES ('x')"))
            await conn.execute(text("INSERT INTO t (name) VALUES ('x')"))
    with pytest.raises(sqlalchemy.exc.OperationalError):
        async with engine.begin() as conn:
            await conn.execute(text("SELECT nothing FROM nowhere"))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0


async def test_a_statement_is_one_trip_to_the_thread(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips: list[str] = []
    original = OneTripConnection._execute

    async def counted(self: OneTripConnection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('warm')"))  # BEGIN is emitted here
        monkeypatch.setattr(OneTripConnection, "_execute", counted)
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
        assert (await conn.execute(text("SELECT name FROM t WHERE id = 2"))).scalar_one() == "a"
        await conn.execute(text("UPDATE t SET name = 'b' WHERE id = 2 RETURNING id"))
        assert trips == ["_run", "_run", "_run"]
