"""Machine-scope locks end to end: jobs of a real agent pool call `conveyor lock` against the
pool's lock service while they run side by side; and `conveyor run` does the same."""

from __future__ import annotations

import itertools
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from conveyor import protocol as p
from conveyor.agent import AgentPool, WorkerOptions
from conveyor.server.service import ServerHandle
from tests.cli.procs import conveyor
from tests.harness import Api, running_server

pytestmark = pytest.mark.anyio

CONVEYOR = f"{sys.executable} -m conveyor.cli.main"

CONTEND = """\
steps:
  - label: contend
    parallelism: 4
    command: |
      token=$$({conveyor} lock acquire shared)
      echo "start $$BUILDKITE_PARALLEL_JOB" >> {log}
      sleep 0.3
      echo "end $$BUILDKITE_PARALLEL_JOB" >> {log}
      {conveyor} lock release shared "$$token"
"""

LEFT_HELD = """\
steps:
  - label: keeps it
    command: "{conveyor} lock acquire kept"
  - wait
  - label: takes it
    command: |
      token=$$({conveyor} lock acquire kept --lock-wait-timeout 30s)
      {conveyor} lock release kept "$$token"
      echo released
"""

DO_ONCE = """\
steps:
  - label: needs setup
    parallelism: 3
    command: |
      if [ "$$({conveyor} lock do {key})" = do ]; then
        echo "work $$BUILDKITE_PARALLEL_JOB" >> {log}
        sleep 0.5
        {conveyor} lock done {key}
      fi
      grep -q work {log}
      echo "ready $$BUILDKITE_PARALLEL_JOB"
"""


@asynccontextmanager
async def pool_of(handle: ServerHandle, tmp_path: Path, spawn: int) -> AsyncIterator[AgentPool]:
    """One agent process of `spawn` workers, its locks in a directory of the test's own."""
    assert handle.registration_token is not None
    pool = AgentPool(
        WorkerOptions(
            endpoint=handle.url,
            registration_token=handle.registration_token,
            build_path=tmp_path / "builds",
        ),
        spawn=spawn,
        locks_dir=tmp_path / "locks",
    )
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        try:
            yield pool
        finally:
            pool.stop()


async def test_four_jobs_on_one_host_take_turns(database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "sections.log"
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        pool_of(server, tmp_path, spawn=4),
        Api(server) as api,
    ):
        build = await api.create_build(CONTEND.format(conveyor=CONVEYOR, log=log))
        build = await api.wait_build(build, timeout=90)
        logs = {job.label: await api.log(job.id) for job in build.jobs}
    assert build.state == p.BuildState.PASSED, (build, logs)
    lines = (await anyio.Path(log).read_text()).splitlines()
    assert len(lines) == 8, lines
    for start, end in zip(lines[::2], lines[1::2], strict=True):
        # Each critical section ends before the next one starts.
        assert start.startswith("start ") and end == "end " + start.removeprefix("start "), lines
    assert sorted(line.split()[1] for line in lines[::2]) == ["0", "1", "2", "3"]
    # The jobs ran side by side (so they did contend): one started before another finished.
    spans = []
    for job in build.jobs:
        assert job.started_at is not None and job.finished_at is not None
        spans.append((job.started_at, job.finished_at))
    spans.sort()
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans


async def test_a_lock_a_job_did_not_release_is_released_when_it_ends(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        pool_of(server, tmp_path, spawn=1),
        Api(server) as api,
    ):
        build = await api.create_build(LEFT_HELD.format(conveyor=CONVEYOR))
        build = await api.wait_build(build, timeout=90)
        taker = next(j for j in build.jobs if j.label == "takes it")
        log = await api.log(taker.id)
    assert build.state == p.BuildState.PASSED, (build, log)
    assert log.endswith(b"released\r\n"), log


async def test_conveyor_run_does_the_work_once(tmp_path: Path) -> None:
    """Three parallel jobs of `conveyor run` need the same setup: one does it, the others wait
    for it and skip it. (A key of its own: the host's lock directory is shared.)"""
    log = tmp_path / "work.log"
    key = f"setup-{uuid.uuid4().hex}"
    await anyio.Path(tmp_path / "pipeline.yml").write_text(
        DO_ONCE.format(conveyor=CONVEYOR, key=key, log=log)
    )
    result = await conveyor("run", "--agents", "3", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len((await anyio.Path(log).read_text()).splitlines()) == 1
    for index in range(3):
        assert f"ready {index}" in result.stdout.replace("echo", "")
