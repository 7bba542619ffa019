"""In-job commands end to end: real jobs call `conveyor meta-data / annotate / annotation /
step` with their own token, on a server with two agents (a producer step on one, a consumer
step on the other), and the same pipeline in `conveyor run`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from conveyor import protocol as p
from conveyor.storage import Store, open_database
from conveyor.storage.engine import sqlite_url
from tests.cli.procs import clean_env, conveyor
from tests.harness import Api, running_agents, running_server

pytestmark = pytest.mark.anyio

CV = f"{sys.executable} -m conveyor.cli.main"

# `$$` is a literal `$` for the job's shell (pipelines are interpolated at upload).
PIPELINE = f"""\
steps:
  - label: producer
    key: producer
    agents:
      queue: "{{producer_queue}}"
    command: |
      {CV} meta-data set release 1.4.2
      printf 'line one\\nline two' | {CV} meta-data set notes -
      {CV} annotate '## Results' --context results --style info
      printf '\\n* producer ok' | {CV} annotate --context results --append
      {CV} annotate 'temporary' --context scratch --style warning
      {CV} step update label 'producer 1.4.2'
      test "$$({CV} step get key)" = producer
  - wait
  - label: consumer
    agents:
      queue: "{{consumer_queue}}"
    command: |
      test "$$({CV} meta-data get release)" = 1.4.2
      test "$$({CV} meta-data get notes)" = "$$(printf 'line one\\nline two')"
      {CV} meta-data exists release
      set +e; {CV} meta-data exists missing; status=$$?; set -e
      test "$$status" = 100
      test "$$({CV} meta-data get missing --default fallback)" = fallback
      test "$$({CV} meta-data keys | tr '\\n' ,)" = notes,release,
      printf '\\n* consumer ok' | {CV} annotate --context results --append
      {CV} annotation remove --context scratch
      echo consumer done
"""

RESULTS = "## Results\n* producer ok\n* consumer ok"


async def test_in_job_commands_on_a_server_with_two_agents(
    database_url: str, tmp_path: Path
) -> None:
    text = PIPELINE.format(producer_queue="one", consumer_queue="two")
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        running_agents(server, tmp_path / "b1", spawn=1, tags={"queue": "one"}),
        running_agents(server, tmp_path / "b2", spawn=1, tags={"queue": "two"}),
        Api(server) as api,
    ):
        build = await api.create_build(text, slug="app")
        done = await api.wait_build(build, timeout=60)
        logs = {j.label: await api.log(j.id) for j in done.jobs}
        notes = (
            await api.http.get(f"/api/v1/pipelines/app/builds/{done.number}/annotations")
        ).json()
    assert done.state == p.BuildState.PASSED, logs
    producer, consumer = done.jobs
    assert producer.agent_id != consumer.agent_id
    assert done.meta_data == {"release": "1.4.2", "notes": "line one\nline two"}
    assert [(n["context"], n["style"], n["body"]) for n in notes] == [("results", "info", RESULTS)]
    assert "producer 1.4.2" in [s.label for s in done.steps]


async def test_the_same_pipeline_in_conveyor_run(tmp_path: Path) -> None:
    await anyio.Path(tmp_path / "pipeline.yml").write_text(
        PIPELINE.format(producer_queue="any", consumer_queue="any")
    )
    data = tmp_path / "data"
    result = await conveyor("run", "--data-dir", str(data), cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "consumer done" in result.stdout
    store = Store(await open_database(sqlite_url(data / "conveyor.db")))
    try:
        async with store.transaction() as tx:
            build = await tx.get_build_by_number("local", 1)
            notes = await tx.list_annotations(build.id)
    finally:
        await store.close()
    assert build.meta_data == {"release": "1.4.2", "notes": "line one\nline two"}
    assert [(n.context, n.style, n.body) for n in notes] == [("results", "info", RESULTS)]


async def test_outside_a_job_each_command_says_so(tmp_path: Path) -> None:
    for args in (
        ("meta-data", "set", "k", "v"),
        ("meta-data", "get", "k"),
        ("annotate", "hello"),
        ("annotation", "remove"),
        ("step", "get", "label"),
        ("build", "cancel"),
    ):
        result = await conveyor(*args, cwd=tmp_path, env=clean_env())
        assert result.returncode == 1, (args, result)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        expected = "only inside a job" if args[0] == "build" else "works only inside a job"
        assert expected in result.stderr, (args, result.stderr)
