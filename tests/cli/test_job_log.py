"""`conveyor job log ID [--timestamps | --raw]` against a real server."""

from __future__ import annotations

import itertools
from pathlib import Path

import anyio
import pytest

from conveyor.client import new_http_client
from conveyor.logformat import Stamper
from tests.cli.procs import CONVEYOR, clean_env, conveyor
from tests.harness import Api, running_server
from tests.server.drive import finish, new_agent, take_job

pytestmark = pytest.mark.anyio

T0 = 1_733_470_000_123  # 2024-12-06T07:26:40.123Z


async def test_job_log_prints_the_output_its_times_or_the_stored_bytes(tmp_path: Path) -> None:
    stamper = Stamper(itertools.count(T0, 1000).__next__)
    stored = stamper.feed(b"one\r\n") + stamper.feed(b"two\r\n") + stamper.flush()
    async with (
        running_server(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "srv") as server,
        Api(server) as api,
        new_http_client(server.url) as http,
    ):
        await api.create_build("steps:\n  - command: talk\n")
        spec, job = await take_job(await new_agent(http, server, "a1"))
        await job.start()
        await job.upload_chunk(1, 0, stored[:9])  # a marker cut in two
        await job.upload_chunk(2, 9, stored[9:])
        await finish(job, 0)
        env = clean_env(CONVEYOR_ENDPOINT=server.url, CONVEYOR_API_TOKEN=server.api_token or "")

        async def job_log(*flags: str) -> tuple[int, bytes, bytes]:
            with anyio.fail_after(60):
                done = await anyio.run_process(
                    [*CONVEYOR, "job", "log", spec.id, *flags], env=env, check=False
                )
            return done.returncode, done.stdout, done.stderr

        assert await job_log() == (0, b"one\r\ntwo\r\n", b"")
        assert await job_log("--timestamps") == (
            0,
            b"[2024-12-06T07:26:40.123Z] one\r\n[2024-12-06T07:26:41.123Z] two\r\n",
            b"",
        )
        assert await job_log("--raw") == (0, stored, b"")
        both = await conveyor("job", "log", spec.id, "--timestamps", "--raw", env=env)
        assert both.returncode == 2
        assert "--timestamps and --raw cannot be used together" in both.stderr
        assert "Traceback" not in both.stderr
