"""`conveyor lock`: the real command against a real lock service, as a job would run it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from conveyor.agent.lockclient import SOCKET_ENV, TOKEN_ENV
from conveyor.agent.lockservice import LockService
from tests.cli.procs import clean_env, conveyor

pytestmark = pytest.mark.anyio


@pytest.fixture
async def job_env(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """The environment of a job of an agent whose lock service runs."""
    service = LockService(tmp_path / "locks")
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        yield clean_env(**service.open_job(1))
        tg.cancel_scope.cancel()


async def test_outside_a_job_one_clear_line() -> None:
    result = await conveyor("lock", "acquire", "db")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "conveyor: error: `conveyor lock acquire` works only inside a job run by a Conveyor "
        f"agent: {SOCKET_ENV} and {TOKEN_ENV} are not set (the agent sets them for the job's "
        "command)\n"
    )


async def test_acquire_get_release(job_env: dict[str, str]) -> None:
    acquired = await conveyor("lock", "acquire", "db", env=job_env)
    assert acquired.returncode == 0, acquired.stderr
    token = acquired.stdout.strip()
    assert token and acquired.stdout == token + "\n"
    got = await conveyor("lock", "get", "db", env=job_env)
    assert got.stdout == token + "\n"

    wrong = await conveyor("lock", "release", "db", "nope", env=job_env)
    assert wrong.returncode == 1
    assert wrong.stderr == "conveyor: error: lock 'db' is held with another token\n"

    waited = await conveyor("lock", "acquire", "db", "--lock-wait-timeout", "300ms", env=job_env)
    assert waited.returncode == 1
    assert waited.stderr == "conveyor: error: timed out after 0.3s waiting for lock 'db'\n"

    released = await conveyor("lock", "release", "db", token, env=job_env)
    assert (released.returncode, released.stdout, released.stderr) == (0, "", "")
    got = await conveyor("lock", "get", "db", env=job_env)
    assert got.stdout == "\n"


async def test_do_then_done(job_env: dict[str, str]) -> None:
    first = await conveyor("lock", "do", "setup", env=job_env)
    assert first.stdout == "do\n", first.stderr
    assert (await conveyor("lock", "get", "setup", env=job_env)).stdout == "doing\n"
    assert (await conveyor("lock", "done", "setup", env=job_env)).returncode == 0
    assert (await conveyor("lock", "do", "setup", env=job_env)).stdout == "done\n"
    again = await conveyor("lock", "done", "setup", env=job_env)
    assert again.returncode == 1
    assert again.stderr == "conveyor: error: the work for 'setup' is already done\n"


async def test_a_bad_duration_is_a_usage_error(job_env: dict[str, str]) -> None:
    result = await conveyor("lock", "do", "setup", "--lock-wait-timeout", "soon", env=job_env)
    assert result.returncode == 2
    assert "'soon' is not a duration such as 30s, 5m, 1h30m or 250ms" in result.stderr


async def test_an_agent_that_is_gone(tmp_path: Path) -> None:
    env = clean_env(**{SOCKET_ENV: str(tmp_path / "gone.sock"), TOKEN_ENV: "t"})
    result = await conveyor("lock", "get", "db", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("conveyor: error: cannot reach the agent's job services at ")
    assert "Traceback" not in result.stderr


async def test_help_explains() -> None:
    result = await conveyor("lock", "--help")
    assert "Locks shared by every job of the agents on this machine." in result.stdout
    assert "conveyor lock do install-toolchain" in result.stdout
    result = await conveyor("lock", "do", "--help")
    assert "--lock-wait-timeout DURATION" in result.stdout
