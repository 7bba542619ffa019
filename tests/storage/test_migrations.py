"""Migrations: a fresh database gets every table at head; running them again is harmless."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from conveyor.errors import ConfigError
from conveyor.storage import Store, open_database
from conveyor.storage import tables as t
from conveyor.storage.engine import MIGRATIONS_DIR
from tests.storage.builders import command_step, insert_agent, insert_build

pytestmark = pytest.mark.anyio


def _head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def _table_names(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _schema_drift(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, t.metadata))


async def test_fresh_database_has_every_table_at_head(database_url: str) -> None:
    head = await anyio.to_thread.run_sync(_head_revision)
    db = await open_database(database_url)
    try:
        async with db.engine.connect() as conn:
            names = await conn.run_sync(_table_names)
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            # tables.py and migrations/ describe the same schema: autogenerate finds nothing.
            drift = await conn.run_sync(_schema_drift)
        assert names == {*t.metadata.tables, "alembic_version"}
        assert [row[0] for row in version] == [head]
        assert drift == []
        # The store works on the new schema: one write and read in every table family.
        store = Store(db)
        async with store.transaction() as tx:
            agent_id = await insert_agent(tx, "a1")
            build_id = await insert_build(tx, "p", [command_step("one")])
            job_id = (await tx.get_build(build_id)).jobs[0].id
            await tx.create_token("job", job_id=job_id)
            await tx.insert_chunk(job_id, 1, 0, b"log")
        async with store.transaction() as tx:
            assert (await tx.get_agent(agent_id)).name == "a1"
            assert await tx.read_chunks(job_id, [0]) == [b"log"]
    finally:
        await db.close()


async def test_opening_twice_keeps_data_and_revision(database_url: str) -> None:
    head = await anyio.to_thread.run_sync(_head_revision)
    first = Store(await open_database(database_url))
    try:
        async with first.transaction() as tx:
            build_id = await insert_build(tx, "p", [command_step("one")])
    finally:
        await first.close()

    # Opening again runs the migrations again: nothing to do, nothing lost.
    second = Store(await open_database(database_url))
    try:
        async with second.transaction() as tx:
            build = await tx.get_build(build_id)
            assert (build.pipeline_slug, build.number, len(build.jobs)) == ("p", 1, 1)
            assert await insert_build(tx, "p", [command_step("two")]) != build_id
        async with second.db.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert [row[0] for row in version] == [head]
    finally:
        await second.close()


@pytest.mark.postgres
async def test_concurrent_migrations_on_postgresql_are_serialised(database_url: str) -> None:
    """Replicas starting together against one fresh PostgreSQL database all come up."""
    if not database_url.startswith("postgresql"):
        pytest.skip("concurrent replicas share PostgreSQL only")
    stores: list[Store] = []

    async def start() -> None:
        stores.append(Store(await open_database(database_url)))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(start)
        async with stores[0].transaction() as tx:
            await insert_build(tx, "p", [command_step("one")])
    finally:
        for store in stores:
            await store.close()
    assert len(stores) == 3


async def test_unsupported_database_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unsupported database 'mysql'"):
        await open_database("mysql://localhost/conveyor")
