"""The spine end to end: real server, real agents, real processes, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import protocol as p
from tests.harness import Api, running_agents, running_server

pytestmark = pytest.mark.anyio


async def test_exit_statuses_and_exact_logs(database_url: str, tmp_path: Path) -> None:
    pipeline = """
steps:
  - label: zero
    command: echo "hello world"
  - label: one
    command: printf 'no newline'; exit 1
  - label: forty-two
    command: echo out; echo err >&2; exit 42
  - label: sigterm
    command: sh -c 'kill -TERM $$'
  - label: sigkill-child
    command: sleep 30 & kill -KILL $!; wait $!
"""
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        running_agents(server, tmp_path / "builds", spawn=2),
        Api(server) as api,
    ):
        build = await api.wait_build(await api.create_build(pipeline))
        jobs = {j.label: j for j in build.jobs}
        assert {k: (j.state, j.exit_status) for k, j in jobs.items()} == {
            "zero": (p.JobState.FINISHED, 0),
            "one": (p.JobState.FINISHED, 1),
            "forty-two": (p.JobState.FINISHED, 42),
            "sigterm": (p.JobState.FINISHED, 143),
            "sigkill-child": (p.JobState.FINISHED, 137),
        }
        assert build.state == p.BuildState.FAILED
        # A PTY ends lines with \r\n and merges stderr into the same stream.
        assert await api.log(jobs["zero"].id) == b"hello world\r\n"
        assert await api.log(jobs["one"].id) == b"no newline"
        assert await api.log(jobs["forty-two"].id) == b"out\r\nerr\r\n"
