"""The SQLite connection the server uses: SQLAlchemy gets what it expects of a statement's
result; small statements run on the event loop, large ones take one trip to the thread."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from conveyor.storage import open_database
from conveyor.storage.engine import sqlite_url
from conveyor.storage.sqlite_conn import INLINE_MAX_BYTES, OneTripConnection

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


async def test_small_statements_stay_on_the_loop_and_large_ones_take_one_trip(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips: list[str] = []
    original = OneTripConnection._execute

    async def counted(self: OneTripConnection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(OneTripConnection, "_execute", counted)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
        assert (await conn.execute(text("SELECT name FROM t WHERE id = 1"))).scalar_one() == "a"
        await conn.execute(text("UPDATE t SET name = 'b' WHERE id = 1 RETURNING id"))
    assert trips == []  # nor the commit

    large = "x" * (INLINE_MAX_BYTES + 1)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES (:name)"), {"name": "small"})
        await conn.execute(text("INSERT INTO t (name) VALUES (:name)"), {"name": large})
        await conn.execute(text("SELECT count(*) FROM t"))
    # The large statement, and the commit of its transaction.
    assert [t for t in trips if t != "_run"] == ["commit"] and trips.count("_run") == 1
    trips.clear()
    async with engine.begin() as conn:  # the next transaction is small again
        await conn.execute(text("UPDATE t SET name = 'c' WHERE id = 1"))
    assert trips == []
    async with engine.connect() as conn:
        names = (await conn.execute(text("SELECT name FROM t ORDER BY id"))).scalars().all()
    assert names == ["c", "small", large]


async def test_a_large_statement_lets_the_loop_go_on(engine: AsyncEngine) -> None:
    """While the thread writes a large value, other tasks run; the statement's error, if any,
    is SQLAlchemy's as for a small one."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0)

    large = "y" * (16 * INLINE_MAX_BYTES)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with engine.begin() as conn:
            before = ticks
            await conn.execute(text("INSERT INTO t (name) VALUES (:name)"), {"name": large})
            assert ticks > before
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (name) VALUES (:name)"), {"name": large})
        tg.cancel_scope.cancel()
