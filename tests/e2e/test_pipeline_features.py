"""Every step kind in one pipeline, end to end: in `conveyor run`, and on a server with two
agents. The order is asserted from the jobs' start and finish times as the server stored them.

The pipeline: a matrix-and-parallelism step, a soft-failing step and a flaky one retried
automatically, then a wait; a group whose steps depend on each other; a block step with a
field; a step that uploads a step of its own; a wait; a trigger of another pipeline; and a
last step that depends on the trigger.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from conveyor import protocol as p
from conveyor.storage import Store, open_database
from conveyor.storage.engine import sqlite_url
from conveyor.storage.rows import BuildRow, JobRow
from tests.cli.procs import CONVEYOR, clean_env, conveyor
from tests.harness import Api, running_agents, running_server

pytestmark = pytest.mark.anyio

UPLOADED = "- label: uploaded\n  command: echo uploaded ${GREETING}\n"

PIPELINE = """\
env:
  GREETING: hello
steps:
  - label: "build {{{{matrix.os}}}}"
    key: build
    command: "echo building {{{{matrix.os}}}} $$BUILDKITE_PARALLEL_JOB"
    parallelism: 2
    matrix:
      setup:
        os: [linux, mac]
  - label: lint
    command: "exit 3"
    soft_fail: [{{exit_status: 3}}]
  - label: flaky
    command: |
      if [ ! -f {marker} ]; then touch {marker}; exit 7; fi
      echo recovered
    retry: {{automatic: [{{exit_status: 7, limit: 2}}]}}
  - wait
  - group: tests
    key: tests
    steps:
      - {{label: unit, key: unit, command: sleep 0.2; echo unit}}
      - {{label: integration, command: echo integration, depends_on: unit}}
  - block: "Release?"
    key: release
    fields: [{{text: Version, key: version, default: "1.0"}}]
  - label: upload
    command: |
      printf -- '{uploaded}' | {python} -m conveyor.cli.main pipeline upload -
  - wait
  - trigger: deploy
    label: deploy
    key: deploy
    build: {{message: from the pipeline}}
  - label: final
    depends_on: [deploy]
    command: echo done
"""

DEPLOY = "steps:\n  - label: ship\n    command: sleep 0.2; echo shipping\n"


def pipeline_text(tmp_path: Path) -> str:
    return PIPELINE.format(
        marker=tmp_path / "flaky.marker",
        python=sys.executable,
        uploaded=UPLOADED.replace("\n", "\\n").replace("$", "$$"),
    )


def latest(build: BuildRow | p.BuildOut, label: str) -> JobRow | p.JobOut:
    jobs = [j for j in build.jobs if j.label == label]
    assert jobs, (label, [j.label for j in build.jobs])
    return max(jobs, key=lambda j: j.attempt)


def times(job: JobRow | p.JobOut) -> tuple[datetime, datetime]:
    assert job.started_at is not None and job.finished_at is not None, job
    return job.started_at, job.finished_at


def check_order(main: BuildRow | p.BuildOut, deploy: BuildRow | p.BuildOut) -> None:
    """What ran, how it ended, and in which order."""
    builds = sorted(j.label for j in main.jobs if j.label.startswith("build"))
    assert builds == [
        "build linux (1/2)",
        "build linux (2/2)",
        "build mac (1/2)",
        "build mac (2/2)",
    ]
    flaky = sorted((j.attempt, j.exit_status) for j in main.jobs if j.label == "flaky")
    assert flaky == [(1, 7), (2, 0)]
    lint = latest(main, "lint")
    assert (lint.exit_status, lint.soft_failed) == (3, True)
    before_wait = [j for j in main.jobs if j.label.startswith("build") or j.label == "lint"]
    before_wait.append(latest(main, "flaky"))
    unit, integration = latest(main, "unit"), latest(main, "integration")
    upload, uploaded = latest(main, "upload"), latest(main, "uploaded")
    ship, final = latest(deploy, "ship"), latest(main, "final")
    # The first wait: everything before it finished before the group started.
    assert max(times(j)[1] for j in before_wait) <= times(unit)[0]
    # depends_on inside the group.
    assert times(unit)[1] <= times(integration)[0]
    # The block step waits for the group; the upload comes after the block.
    assert times(integration)[1] <= times(upload)[0]
    # The uploaded step runs after the upload and before the wait that follows it.
    assert times(upload)[0] <= times(uploaded)[0]
    assert times(uploaded)[1] <= times(ship)[0]
    # The trigger waits for the triggered build; `final` depends on the trigger.
    assert times(ship)[1] <= times(final)[0]
    assert main.meta_data == {"version": "1.0"}
    assert deploy.message == "from the pipeline"
    assert main.state == p.BuildState.PASSED and deploy.state == p.BuildState.PASSED


async def test_every_step_kind_in_conveyor_run(tmp_path: Path) -> None:
    work = tmp_path / "work"
    await anyio.Path(work).mkdir()
    await anyio.Path(work / "pipeline.yml").write_text(pipeline_text(tmp_path))
    await anyio.Path(work / "deploy.yml").write_text(DEPLOY)
    data = tmp_path / "data"
    result = await conveyor(
        "run", "--unblock", "--data-dir", str(data), "--agents", "2", cwd=work, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "uploaded │ uploaded hello" in result.stdout
    assert "ship │ shipping" in result.stdout
    assert "unblocking 'Release?' (--unblock)" in result.stdout
    store = Store(await open_database(sqlite_url(data / "conveyor.db")))
    try:
        async with store.transaction() as tx:
            main = await tx.get_build_by_number("local", 1)
            deploy = await tx.get_build_by_number("deploy", 1)
    finally:
        await store.close()
    check_order(main, deploy)


async def test_a_blocked_build_without_unblock_or_terminal_is_canceled(tmp_path: Path) -> None:
    await anyio.Path(tmp_path / "pipeline.yml").write_text(
        "steps:\n  - command: echo before\n  - block: Go?\n  - command: echo never\n"
    )
    result = await conveyor("run", cwd=tmp_path)
    assert result.returncode == 1
    assert "'Go?' is blocked and there is no terminal to ask: rerun with --unblock" in (
        result.stdout
    )
    assert "never" not in result.stdout.replace("echo never", "")


async def test_a_trigger_without_a_file_fails_its_step(tmp_path: Path) -> None:
    await anyio.Path(tmp_path / "pipeline.yml").write_text("steps:\n  - trigger: elsewhere\n")
    result = await conveyor("run", cwd=tmp_path, env=clean_env())
    assert result.returncode == 1
    assert "names pipeline 'elsewhere'" in result.stderr


async def test_conveyor_run_follows_triggered_builds(tmp_path: Path) -> None:
    """A triggered build's block step is unblocked like the top build's, and the run waits for
    an async trigger's build, which outlives the build that triggered it."""
    files = {
        "pipeline.yml": "steps:\n  - trigger: release\n  - trigger: later\n    async: true\n",
        "release.yml": "steps:\n  - block: Ship it?\n  - command: echo shipped\n",
        "later.yml": "steps:\n  - command: sleep 1; echo later\n",
    }
    for name, text in files.items():
        await anyio.Path(tmp_path / name).write_text(text)
    data = tmp_path / "data"
    result = await conveyor("run", "--unblock", "--data-dir", str(data), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "unblocking 'Ship it?' (--unblock)" in result.stdout
    assert "shipped" in result.stdout.replace("echo shipped", "")
    store = Store(await open_database(sqlite_url(data / "conveyor.db")))
    try:
        async with store.transaction() as tx:
            for slug in ("local", "release", "later"):
                build = await tx.get_build_by_number(slug, 1)
                assert build.state == p.BuildState.PASSED, (slug, build.state)
    finally:
        await store.close()


async def test_every_step_kind_on_a_server_with_two_agents(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        running_agents(server, tmp_path / "builds", spawn=2),
        Api(server) as api,
    ):
        r = await api.http.put("/api/v1/pipelines/deploy", json={"steps": DEPLOY})
        assert r.status_code in (200, 201), r.text
        build = await api.create_build(pipeline_text(tmp_path), slug="app")
        with anyio.fail_after(60):
            while build.state != p.BuildState.BLOCKED:
                r = await api.http.get(
                    f"/api/v1/pipelines/app/builds/{build.number}",
                    params={"wait": 30, "after": build.version},
                )
                build = p.BuildOut.model_validate(r.json())
                assert not build.state.terminal, build
        blocked = [s for s in build.steps if s.state == "blocked"]
        assert [s.key for s in blocked] == ["release"]
        r = await api.http.post(
            f"/api/v1/pipelines/app/builds/{build.number}/steps/release/unblock",
            json={"fields": {}},
        )
        assert r.status_code == 200, r.text
        main = await api.wait_build(build, timeout=90)
        r = await api.http.get("/api/v1/pipelines/deploy/builds/1")
        deploy = p.BuildOut.model_validate(r.json())
        logs = await api.log(latest(main, "uploaded").id)
    check_order(main, deploy)
    assert logs == b"uploaded hello\r\n"


async def test_conveyor_run_asks_on_a_terminal(tmp_path: Path) -> None:
    """With a terminal on standard input, a blocked step is confirmed and its fields asked."""
    await anyio.Path(tmp_path / "pipeline.yml").write_text(
        "steps:\n  - block: Release?\n    prompt: Ready to ship?\n"
        "    fields: [{text: Version, key: version, default: '1.0'}]\n"
        "  - label: ship\n    command: echo shipped\n"
    )
    controller, terminal = os.openpty()
    try:
        # The answers wait in the terminal's input until the prompts read them.
        os.write(controller, b"y\n2.0\n")
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [*CONVEYOR, "run", "--data-dir", str(tmp_path / "data")],
                stdin=terminal,
                cwd=tmp_path,
                env=clean_env(),
                check=False,
            )
    finally:
        os.close(controller)
        os.close(terminal)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "Ready to ship?" in out and "Release?: unblock? [y/N]" in out
    assert "Version (default 1.0):" in out
    assert "ship │ shipped" in out
    store = Store(await open_database(sqlite_url(tmp_path / "data" / "conveyor.db")))
    try:
        async with store.transaction() as tx:
            assert (await tx.get_build_by_number("local", 1)).meta_data == {"version": "2.0"}
    finally:
        await store.close()
