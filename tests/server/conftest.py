"""Fixtures for the server API tests: a real server on loopback, the REST helper, an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from conveyor.client import new_http_client
from conveyor.server.service import ServerHandle
from tests.harness import Api, running_server
from tests.server.drive import Driver


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[ServerHandle]:
    async with running_server(database_url, tmp_path / "srv", chunk_max_size=4096) as handle:
        yield handle


@pytest.fixture
async def api(server: ServerHandle) -> AsyncIterator[Api]:
    async with Api(server) as api:
        yield api


@pytest.fixture
async def http(server: ServerHandle) -> AsyncIterator[httpx.AsyncClient]:
    """The agent's own HTTP client, as `conveyor.client` makes it."""
    async with new_http_client(server.url) as client:
        yield client


@pytest.fixture
def driver(server: ServerHandle, http: httpx.AsyncClient, api: Api) -> Driver:
    """Moves one build along with agents that each serve one queue (see `drive.Driver`)."""
    return Driver(server, http, api)
