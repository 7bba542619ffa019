"""Open a database from a URL, tune it per backend, and bring its schema to the newest migration."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conveyor.errors import ConfigError
from conveyor.storage import sqlite_conn
from conveyor.storage.checkpoint import WRITER_CHECKPOINT_PAGES

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Any id works as long as every replica uses the same one: it serialises concurrent migrations.
_MIGRATION_LOCK_ID = 0x636F6E76


@dataclass(frozen=True)
class Database:
    engine: AsyncEngine
    backend: str  # "sqlite" | "postgresql"
    url: str  # without password, for display

    @property
    def sqlite_path(self) -> Path | None:
        """The database file, for SQLite on disk given by its path; None otherwise."""
        if self.backend != "sqlite":
            return None
        database = make_url(self.url).database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None  # in memory, or a URI: its own connection would not be this one's
        return Path(database)

    async def close(self) -> None:
        await self.engine.dispose()


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _async_url(url: str) -> tuple[str, str]:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL {url!r}: {exc}", key="database-url") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
        backend = "postgresql"
    else:
        raise ConfigError(
            f"unsupported database {backend!r} in {url!r}: use sqlite:///PATH or postgresql://…",
            key="database-url",
        )
    return parsed.render_as_string(hide_password=False), backend


def _tune_sqlite(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    # Checkpoints are the server's background loop's work (storage.checkpoint); a writer
    # runs one only past this ceiling.
    cur.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
    cur.close()


def _upgrade(sync_conn: Connection) -> None:
    # Imported here: Alembic is only needed while migrating, and costs start-up time.
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


def _create_engine(async_url: str, backend: str) -> AsyncEngine:
    if backend == "sqlite":
        # One connection: SQLite has one writer anyway, and a single connection means no
        # SQLITE_BUSY between our own sessions. Sessions are kept short for that reason.
        url = make_url(async_url)
        args, kwargs = url.get_dialect()().create_connect_args(url)
        engine = create_async_engine(
            async_url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            # One trip to the connection's thread per statement (see sqlite_conn).
            async_creator=sqlite_conn.connect(*args, **kwargs),
        )
        event.listen(engine.sync_engine, "connect", _tune_sqlite)
    else:
        engine = create_async_engine(async_url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    return engine


async def open_database(url: str, *, migrate: bool = True) -> Database:
    """Create the engine for `url` (sqlite:/// or postgresql://) and apply pending migrations.

    Engine creation and migrations read files and resolve paths: both run in a worker thread,
    the migrations on an event loop and engine of their own, so the server's loop never blocks.
    """
    async_url, backend = _async_url(url)
    if migrate:
        await anyio.to_thread.run_sync(_migrate_in_thread, async_url, backend)
    engine = await anyio.to_thread.run_sync(_create_engine, async_url, backend)
    return Database(engine=engine, backend=backend, url=make_url(async_url).render_as_string())


def _migrate_in_thread(async_url: str, backend: str) -> None:
    async def migrate() -> None:
        engine = _create_engine(async_url, backend)
        try:
            async with engine.begin() as conn:
                if backend == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
                    )
                await conn.run_sync(_upgrade)
        finally:
            await engine.dispose()

    asyncio.run(migrate())
