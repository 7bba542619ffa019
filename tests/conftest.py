"""Shared fixtures: the anyio backend, the blocking-call detector, and the databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from conveyor.storage import Store, open_database

POSTGRES_ADMIN_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster | None]:
    """Fail any test whose code makes a blocking call on the event loop."""
    with blockbuster_ctx("conveyor") as bb:
        # Migrations run in a worker thread on an event loop of their own: blocking there
        # stalls nothing else.
        for function in bb.functions.values():
            function.can_block_in("conveyor/storage/engine.py", "_migrate_in_thread")
            function.can_block_in("conveyor/storage/engine.py", "_upgrade")
            # Small SQLite statements run on the loop on purpose (storage/sqlite_conn.py).
            function.can_block_in("conveyor/storage/sqlite_conn.py", {"_run", "commit", "rollback"})
            # asyncpg looks for ~/.pgpass and ~/.postgresql/ certificates once per new pooled
            # connection: a few stats of small files, rare once the pool is warm.
            function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")
        yield bb


def _postgres_reachable() -> str | None:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return None
    except OSError as exc:
        return f"PostgreSQL not reachable at 127.0.0.1:5432 ({exc})"


_PG_SKIP = _postgres_reachable()


async def _create_pg_database() -> tuple[str, str]:
    import asyncpg
    from sqlalchemy.engine import make_url

    admin = make_url(POSTGRES_ADMIN_URL)
    name = f"conveyor_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(
        host=admin.host, port=admin.port, user=admin.username, database=admin.database,
        password=admin.password,
    )  # fmt: skip
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin.set(database=name).render_as_string(hide_password=False), name


async def _drop_pg_database(name: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    admin = make_url(POSTGRES_ADMIN_URL)
    conn = await asyncpg.connect(
        host=admin.host, port=admin.port, user=admin.username, database=admin.database,
        password=admin.password,
    )  # fmt: skip
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(_PG_SKIP is not None, reason=_PG_SKIP or ""),
            ],
        ),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database on each backend: SQLite in tmp_path, PostgreSQL created here."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'conveyor.db'}"
        return
    url, name = await _create_pg_database()
    try:
        yield url
    finally:
        await _drop_pg_database(name)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated, empty database on each backend, opened directly (no server)."""
    db = await open_database(database_url)
    opened = Store(db)
    try:
        yield opened
    finally:
        await opened.close()
