"""Background WAL checkpoints: the server's writer leaves them to a loop of its own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conveyor.storage import Database, Store, open_database
from conveyor.storage.checkpoint import WRITER_CHECKPOINT_PAGES, checkpoint_loop, checkpoint_once
from conveyor.storage.engine import sqlite_url
from tests.storage.builders import command_step, insert_build

pytestmark = pytest.mark.anyio

CHUNK = 256 * 1024
CHUNKS = 24  # 6 MiB: past SQLite's default checkpoint point of 1,000 pages, under ours


async def _write_log(store: Store) -> str:
    async with store.transaction() as tx:
        build_id = await insert_build(tx, "p", [command_step("a")])
        job = (await tx.get_build(build_id)).jobs[0].id
    for i in range(CHUNKS):
        async with store.transaction() as tx:
            await tx.insert_chunk(job, i + 1, i * CHUNK, bytes([i]) * CHUNK)
    return job


def _checkpoint(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return checkpoint_once(conn)
    finally:
        conn.close()


async def test_writer_leaves_checkpoints_to_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.db"
    db = await open_database(sqlite_url(path))
    store = Store(db)
    try:
        assert db.sqlite_path == path
        async with db.engine.connect() as conn:
            pages = (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()
        assert pages == WRITER_CHECKPOINT_PAGES
        before = path.stat().st_size
        await _write_log(store)
        # Committed, in the log, not yet in the database file: no writer checkpointed.
        assert path.stat().st_size - before < CHUNK * CHUNKS
        in_log, copied = await anyio.to_thread.run_sync(_checkpoint, path)
        assert in_log == copied >= CHUNK * CHUNKS // 4096
        assert path.stat().st_size - before >= CHUNK * CHUNKS
    finally:
        await store.close()


async def test_loop_checkpoints_until_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.db"
    db = await open_database(sqlite_url(path))
    store = Store(db)
    try:
        before = path.stat().st_size
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: checkpoint_loop(path, interval=0.05))
            job = await _write_log(store)
            with anyio.fail_after(10):
                while path.stat().st_size - before < CHUNK * CHUNKS:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        # What the loop copied is what was committed, all of it.
        async with store.transaction() as tx:
            index = await tx.chunk_index(job)
            assert await tx.read_chunks(job, [index[-1][0]]) == [bytes([CHUNKS - 1]) * CHUNK]
        assert len(index) == CHUNKS
    finally:
        await store.close()


async def test_postgres_and_memory_have_no_file(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        if db.backend == "sqlite":
            assert db.sqlite_path is not None and db.sqlite_path.exists()
        else:
            assert db.sqlite_path is None
    finally:
        await db.close()


async def test_a_database_the_loop_cannot_open_is_left_to_its_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(5):
        await checkpoint_loop(tmp_path / "no-such-dir" / "conveyor.db", interval=0.01)
    assert "no background checkpoints" in caplog.text


@pytest.mark.parametrize(
    ("database", "file"),
    [(":memory:", False), ("file:shared?mode=memory&uri=true", False), ("/d/c.db", True)],
)
async def test_uri_and_memory_databases_get_no_loop(database: str, file: bool) -> None:
    url = f"sqlite+aiosqlite:///{database}"
    engine = create_async_engine("sqlite+aiosqlite://")  # not used: the URL is what counts
    try:
        db = Database(engine=engine, backend="sqlite", url=url)
        assert db.sqlite_path == (Path(database) if file else None)
    finally:
        await engine.dispose()
