"""Fixtures for the storage tests: a migrated, empty database on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conveyor.storage import Store, open_database


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    db = await open_database(database_url)
    store = Store(db)
    try:
        yield store
    finally:
        await store.close()
