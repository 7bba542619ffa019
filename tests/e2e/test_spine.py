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
    command: sh -c 'kill -TERM $$$$'  # $$ is an escaped $ in pipelines
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


async def test_wait_orders_steps_and_failure_skips_the_rest(
    database_url: str, tmp_path: Path
) -> None:
    pipeline = """
steps:
  - label: a
    command: sleep 0.3; echo a
  - label: b
    command: echo b
  - wait
  - label: c
    command: echo c
  - label: d
    command: exit 3
  - wait
  - label: never
    command: echo never
"""
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        running_agents(server, tmp_path / "builds", spawn=2),
        Api(server) as api,
    ):
        build = await api.wait_build(await api.create_build(pipeline))
    jobs = {j.label: j for j in build.jobs}
    assert build.state == p.BuildState.FAILED
    assert [(j.label, j.state, j.exit_status) for j in build.jobs] == [
        ("a", p.JobState.FINISHED, 0),
        ("b", p.JobState.FINISHED, 0),
        ("c", p.JobState.FINISHED, 0),
        ("d", p.JobState.FINISHED, 3),
        ("never", p.JobState.SKIPPED, None),
    ]
    # Nothing after a wait starts before everything before it has finished.
    for later in ("c", "d"):
        started = jobs[later].started_at
        assert started is not None
        for earlier in ("a", "b"):
            finished = jobs[earlier].finished_at
            assert finished is not None and finished <= started


async def test_job_environment(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_server(database_url, tmp_path / "srv") as server:
        assert server.registration_token is not None
        # An agent configured through its environment must not hand its token to jobs.
        monkeypatch.setenv("CONVEYOR_TOKEN", server.registration_token)
        monkeypatch.setenv("CONVEYOR_AGENT_SPAWN", "1")
        # Nor an operator's API token, nor the path of a config file holding a token.
        monkeypatch.setenv("CONVEYOR_API_TOKEN", "cvt_operator_secret")
        monkeypatch.setenv("CONVEYOR_CONFIG", "/etc/conveyor/agent.yml")
        monkeypatch.setenv("INHERITED_BY_JOBS", "yes")
        pipeline = """
env:
  PIPELINE_VAR: from-pipeline
steps:
  - label: env
    key: show-env
    env:
      STEP_VAR: from-step
    command: env | sort; pwd
"""
        async with running_agents(server, tmp_path / "builds", spawn=1), Api(server) as api:
            build = await api.wait_build(
                await api.create_build(pipeline, branch="feature/x", env={"BUILD_VAR": "b"})
            )
            log = (await api.log(build.jobs[0].id)).decode()
    assert "\r\n" in log
    env = dict(line.split("=", 1) for line in log.split("\r\n") if "=" in line)
    job = build.jobs[0]
    assert server.registration_token not in log
    assert "CONVEYOR_TOKEN" not in env and "CONVEYOR_AGENT_SPAWN" not in env
    assert "cvt_operator_secret" not in log and "CONVEYOR_CONFIG" not in env
    assert env["INHERITED_BY_JOBS"] == "yes"
    expected = {
        "CONVEYOR_JOB_ID": job.id,
        "BUILDKITE_JOB_ID": job.id,
        "CONVEYOR_BUILD_ID": build.id,
        "CONVEYOR_BUILD_NUMBER": str(build.number),
        "BUILDKITE_BUILD_NUMBER": str(build.number),
        "CONVEYOR_PIPELINE_SLUG": "test",
        "CONVEYOR_STEP_KEY": "show-env",
        "CONVEYOR_LABEL": "env",
        "CONVEYOR_BRANCH": "feature/x",
        "BUILDKITE_BRANCH": "feature/x",
        "PIPELINE_VAR": "from-pipeline",
        "STEP_VAR": "from-step",
        "BUILD_VAR": "b",
        "CI": "true",
        "TERM": "xterm-256color",
    }
    assert {k: env.get(k) for k in expected} == expected
    # The job has its token, but printing it shows nothing of it: *_TOKEN values are redacted.
    assert env["CONVEYOR_AGENT_ACCESS_TOKEN"] == "[REDACTED]"
    assert env["BUILDKITE_AGENT_ACCESS_TOKEN"] == "[REDACTED]"
    assert "cvj_" not in log
    # Jobs run in <build-path>/<agent-name>/<pipeline>.
    checkout = env["CONVEYOR_BUILD_CHECKOUT_PATH"]
    assert checkout.startswith(str(tmp_path / "builds")) and checkout.endswith("/test")
    assert log.rstrip().endswith(checkout)
