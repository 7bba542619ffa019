"""Server start: tokens created once and kept in the data dir; restarts keep them."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import anyio
import httpx
import pytest

from conveyor import protocol as p
from conveyor.client import AgentClient, new_http_client
from tests.harness import running_server

pytestmark = pytest.mark.anyio


async def _mode(path: Path) -> int:
    return stat.S_IMODE((await anyio.Path(path).stat()).st_mode)


async def test_tokens_are_created_on_first_start_and_kept(
    database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "srv"
    registration_file = data_dir / "registration-token"
    api_file = data_dir / "api-token"
    async with running_server(database_url, data_dir) as first:
        assert first.created_tokens
        assert first.registration_token is not None and first.api_token is not None
        assert first.registration_token.startswith(p.REGISTRATION_TOKEN_PREFIX)
        assert first.api_token.startswith(p.API_TOKEN_PREFIX)
        assert await anyio.Path(registration_file).read_text() == first.registration_token + "\n"
        assert await anyio.Path(api_file).read_text() == first.api_token + "\n"
        assert await _mode(registration_file) == 0o600
        assert await _mode(api_file) == 0o600
        async with new_http_client(first.url) as http:
            reg = await AgentClient(http, first.registration_token).register(
                p.RegisterRequest(name="before-restart")
            )

    async with running_server(database_url, data_dir) as second:
        assert not second.created_tokens
        assert (second.registration_token, second.api_token) == (
            first.registration_token,
            first.api_token,
        )
        assert await _mode(api_file) == 0o600
        async with new_http_client(second.url) as http:
            # The old tokens still work: the registration token, the API token, the agent's.
            await AgentClient(http, first.registration_token).register(
                p.RegisterRequest(name="after-restart")
            )
            await AgentClient(http, reg.access_token).connect()
            r = await http.get(
                "/api/v1/agents", headers={"Authorization": f"Token {first.api_token}"}
            )
        assert r.status_code == 200
        assert sorted(a["name"] for a in r.json()) == ["after-restart", "before-restart"]


async def test_a_replica_with_another_data_dir_does_not_mint_new_tokens(
    database_url: str, tmp_path: Path
) -> None:
    async with running_server(database_url, tmp_path / "one") as first:
        pass
    async with running_server(database_url, tmp_path / "two") as second:
        # The tokens exist (as hashes) in the shared database; their values are not known here.
        assert (second.registration_token, second.api_token, second.created_tokens) == (
            None,
            None,
            False,
        )
        assert not await anyio.Path(tmp_path / "two" / "api-token").exists()
        async with httpx.AsyncClient(base_url=second.url) as http:
            r = await http.get(
                "/api/v1/builds", headers={"Authorization": f"Token {first.api_token}"}
            )
        assert r.status_code == 200


async def test_a_token_file_is_registered_in_a_new_database(tmp_path: Path) -> None:
    """A data dir kept across a fresh database: the tokens in its files are registered again."""
    data_dir = tmp_path / "srv"
    async with running_server(f"sqlite:///{tmp_path / 'old.db'}", data_dir) as first:
        pass
    async with running_server(f"sqlite:///{tmp_path / 'new.db'}", data_dir) as second:
        assert second.api_token == first.api_token
        assert not second.created_tokens
        async with httpx.AsyncClient(base_url=second.url) as http:
            r = await http.get(
                "/api/v1/builds", headers={"Authorization": f"Token {second.api_token}"}
            )
        assert r.status_code == 200


async def test_a_waiting_request_is_answered_when_the_server_stops(
    database_url: str, tmp_path: Path
) -> None:
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(timeout=30) as http, anyio.create_task_group() as tg:
        async with running_server(database_url, tmp_path / "srv") as server:
            headers = {"Authorization": f"Token {server.api_token}"}
            r = await http.post(
                f"{server.url}/api/v1/pipelines/test/builds",
                json={"pipeline": "steps:\n  - command: one\n"},
                headers=headers,
            )
            build = p.BuildOut.model_validate(r.json())

            async def poll() -> None:
                answers.append(
                    await http.get(
                        f"{server.url}/api/v1/pipelines/test/builds/{build.number}",
                        params={"wait": 30, "after": build.version},
                        headers=headers,
                    )
                )

            tg.start_soon(poll)
            await anyio.sleep(0.5)
            assert answers == []
            stopping = time.monotonic()
        # The server is down: stopping did not wait for the 30 s poll (nor the 3 s grace).
        assert time.monotonic() - stopping < 2.5
    [answer] = answers
    assert answer.status_code == 200
    assert p.BuildOut.model_validate(answer.json()).version == build.version
