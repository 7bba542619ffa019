"""The real `conveyor` command: pipeline set / list / show / upload / check, build unblock,
job retry, against a real server on loopback."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from conveyor import protocol as p
from conveyor.client import new_http_client
from conveyor.server.service import ServerHandle
from tests.cli.procs import Result, clean_env, conveyor
from tests.harness import Api, running_agents, running_server
from tests.server.drive import finish, new_agent, take_job

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[ServerHandle]:
    async with running_server(database_url, tmp_path / "srv") as handle:
        yield handle


@pytest.fixture
async def api(server: ServerHandle) -> AsyncIterator[Api]:
    async with Api(server) as api:
        yield api


@pytest.fixture
async def http(server: ServerHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client(server.url) as client:
        yield client


def ops(server: ServerHandle) -> dict[str, str]:
    assert server.api_token is not None
    return clean_env(CONVEYOR_ENDPOINT=server.url, CONVEYOR_API_TOKEN=server.api_token)


def failed_clearly(result: Result, *words: str) -> None:
    """Exit 1, one line on stderr saying `words`, no traceback."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


async def test_pipeline_set_list_show_and_build_from_stored_steps(
    server: ServerHandle, tmp_path: Path
) -> None:
    env = ops(server)
    empty = await conveyor("pipeline", "list", env=env)
    assert empty.returncode == 0 and "no pipelines" in empty.stdout

    good = tmp_path / "ci.yml"
    await anyio.Path(good).write_text("steps:\n  - label: hello\n    command: echo hi\n")
    saved = await conveyor(
        "pipeline", "set", "web", "--name", "Web site", "--repository", "git@example.com:w.git",
        "--default-branch", "trunk", "--steps", str(good), env=env,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    assert "Pipeline web saved" in saved.stdout and "stored (3 lines)" in saved.stdout
    assert (await conveyor("pipeline", "set", "api", env=env)).returncode == 0

    listed = await conveyor("pipeline", "list", env=env)
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["SLUG", "NAME", "BRANCH", "STEPS", "REPOSITORY"]
    assert lines[1].split()[:2] == ["api", "api"]
    assert "from .buildkite/pipeline.yml" in lines[1]
    assert lines[2].split() == ["web", "Web", "site", "trunk", "stored", "git@example.com:w.git"]

    shown = await conveyor("pipeline", "show", "web", env=env)
    assert shown.returncode == 0
    assert "default branch  trunk" in shown.stdout
    assert "    command: echo hi" in shown.stdout

    # A build without a pipeline file runs the stored steps, on the default branch.
    created = await conveyor("build", "create", "--pipeline", "web", env=env)
    assert created.returncode == 0, created.stderr
    assert "Build web#1 created" in created.stdout
    build = await conveyor("build", "show", "1", "--pipeline", "web", env=env)
    assert "branch trunk" in build.stdout and "hello: waiting" in build.stdout

    # Bad steps: one clear line naming file and line, and nothing changes.
    bad = tmp_path / "bad.yml"
    await anyio.Path(bad).write_text(
        "steps:\n  - command: a\n    key: x\n  - command: b\n    key: x\n"
    )
    rejected = await conveyor(
        "pipeline", "set", "web", "--name", "New", "--steps", str(bad), env=env
    )
    failed_clearly(rejected, "422", f"{bad}:4", "'x'")
    assert "name            Web site" in (await conveyor("pipeline", "show", "web", env=env)).stdout
    failed_clearly(await conveyor("pipeline", "show", "nope", env=env), "404", "no pipeline 'nope'")
    failed_clearly(await conveyor("pipeline", "set", "bad slug", env=env), "422", "slug")
    failed_clearly(
        await conveyor("build", "create", "--pipeline", "api", env=env), "has no stored steps"
    )
    failed_clearly(
        await conveyor("pipeline", "set", "web", "--steps", str(good), "--no-steps", env=env),
        "not both",
    )
    cleared = await conveyor("pipeline", "set", "web", "--no-steps", env=env)
    assert cleared.returncode == 0 and "none stored" in cleared.stdout


async def test_build_unblock_and_job_retry(
    server: ServerHandle, api: Api, http: httpx.AsyncClient
) -> None:
    env = ops(server)
    build = await api.create_build(
        "steps:\n"
        "  - label: compile\n"
        "    command: make\n"
        "  - block: Release?\n"
        "    key: release\n"
        "    fields:\n"
        "      - text: Version\n"
        "        key: version\n"
        "      - select: Channel\n"
        "        key: channel\n"
        "        options: [{label: Beta, value: beta}, {label: Stable, value: stable}]\n"
        "  - label: publish\n"
        "    command: publish\n"
    )
    agent = await new_agent(http, server, "a1")
    spec, job = await take_job(agent)
    await job.start()
    await finish(job, exit_status=2)

    shown = await conveyor("build", "show", str(build.number), "--pipeline", "test", env=env)
    assert shown.returncode == 0
    assert "Build test#1: failed" in shown.stdout
    assert "✘ compile: failed (exit status 2)" in shown.stdout
    assert "Release?: not run" in shown.stdout

    # The retry passes: the build carries on to the block step.
    retried = await conveyor("job", "retry", spec.id, env=env)
    assert retried.returncode == 0, retried.stderr
    assert "Retrying 'compile': attempt 2 is job" in retried.stdout
    failed_clearly(await conveyor("job", "retry", spec.id, env=env), "409", "already retried")
    failed_clearly(await conveyor("job", "retry", "no-such-job", env=env), "404")
    spec2, job2 = await take_job(agent)
    assert spec2.id != spec.id and spec2.label == "compile"
    await job2.start()
    await finish(job2)

    shown = await conveyor("build", "show", "1", "--pipeline", "test", env=env)
    assert "Build test#1: blocked" in shown.stdout
    assert (
        "⏸ Release?: blocked (block); unblock with: conveyor build unblock test 1 release "
        "--field 'version=Version' --field 'channel=beta|stable'"
    ) in shown.stdout

    failed_clearly(
        await conveyor("build", "unblock", "test", "1", "release", env=env), "422", "required"
    )
    failed_clearly(
        await conveyor("build", "unblock", "test", "1", "nope", env=env), "404", "'nope'"
    )
    failed_clearly(
        await conveyor("build", "unblock", "test", "1", "release", "--field", "novalue", env=env),
        "--field 'novalue' is not KEY=VALUE",
    )
    done = await conveyor(
        "build", "unblock", "test", "1", "release", "--field", "version=2.0",
        "--field", "channel=stable", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Unblocked 'Release?': build test#1 is running" in done.stdout
    shown = await conveyor("build", "show", "1", "--pipeline", "test", env=env)
    assert "meta-data channel=stable" in shown.stdout and "meta-data version=2.0" in shown.stdout
    failed_clearly(
        await conveyor("build", "unblock", "test", "1", "release", env=env), "409", "not blocked"
    )


async def test_pipeline_upload_inside_and_outside_a_job(
    server: ServerHandle, api: Api, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    outside = await conveyor("pipeline", "upload", cwd=tmp_path)
    failed_clearly(outside, "works only inside a job", "CONVEYOR_AGENT_ACCESS_TOKEN")

    await api.create_build("steps:\n  - label: uploader\n    command: conveyor pipeline upload\n")
    spec, job = await take_job(await new_agent(http, server, "a1"))
    await job.start()
    # What the agent gives the job's command (the Buildkite names work too).
    job_env = clean_env(
        BUILDKITE_AGENT_ENDPOINT=server.url,
        BUILDKITE_AGENT_ACCESS_TOKEN=spec.token,
        CONVEYOR_JOB_ID=spec.id,
    )
    nothing = await conveyor("pipeline", "upload", env=job_env, cwd=tmp_path)
    failed_clearly(nothing, "none found", ".buildkite/pipeline.yml", ".conveyor/pipeline.yml")

    await anyio.Path(tmp_path / ".buildkite").mkdir()
    await anyio.Path(tmp_path / ".buildkite" / "pipeline.yaml").write_text(
        "steps:\n  - label: tests\n    command: echo $BUILDKITE_BUILD_NUMBER\n    flavour: x\n"
    )
    uploaded = await conveyor("pipeline", "upload", env=job_env, cwd=tmp_path)
    assert uploaded.returncode == 0, uploaded.stderr
    assert "uploaded 1 step from .buildkite/pipeline.yaml" in uploaded.stdout
    assert "warning: .buildkite/pipeline.yaml:4:5: unknown" in uploaded.stderr

    bad = tmp_path / "bad.yml"
    await anyio.Path(bad).write_text("steps:\n  - command: [oops\n")
    failed_clearly(
        await conveyor("pipeline", "upload", str(bad), "--replace", env=job_env), "422", "bad.yml:3"
    )
    build = (await api.http.get("/api/v1/pipelines/test/builds/1")).json()
    assert [j["command"] for j in build["jobs"]] == ["conveyor pipeline upload", "echo 1"]

    await finish(job)
    gone = await conveyor("pipeline", "upload", env=job_env, cwd=tmp_path)
    failed_clearly(gone, "refused this job's token", "401")


async def test_pipeline_check_graph_and_env(tmp_path: Path) -> None:
    duplicate = tmp_path / "dup.yml"
    await anyio.Path(duplicate).write_text(
        "steps:\n  - command: a\n    key: x\n  - command: b\n    key: x\n"
    )
    result = await conveyor("pipeline", "check", str(duplicate))
    failed_clearly(result, f"error: {duplicate}:4", "key 'x' is already used by the step on line 2")

    unknown = tmp_path / "unknown.yml"
    await anyio.Path(unknown).write_text("steps:\n  - command: a\n    depends_on: elsewhere\n")
    result = await conveyor("pipeline", "check", str(unknown))
    assert result.returncode == 0, result.stderr
    assert f"warning: {unknown}:2" in result.stderr and "'elsewhere'" in result.stderr
    assert "unknown.yml: ok (1 steps)" in result.stdout

    needs = tmp_path / "needs.yml"
    await anyio.Path(needs).write_text("steps:\n  - command: deploy ${TARGET:?}\n")
    assert (await conveyor("pipeline", "check", str(needs))).returncode == 0
    ok = await conveyor("pipeline", "check", str(needs), "--env", "TARGET=prod", "-e", "X=1")
    assert ok.returncode == 0, ok.stderr
    missing = await conveyor("pipeline", "check", str(needs), "--env", "OTHER=1")
    failed_clearly(missing, f"{needs}:2", "$TARGET")
    failed_clearly(await conveyor("pipeline", "check", str(needs), "--env", "NOPE"), "KEY=VALUE")


@pytest.mark.parametrize(
    "command",
    [
        ["pipeline"],
        ["pipeline", "upload"],
        ["pipeline", "set"],
        ["pipeline", "list"],
        ["pipeline", "show"],
        ["pipeline", "check"],
        ["build", "unblock"],
        ["build", "show"],
        ["job", "retry"],
    ],
)
async def test_every_command_explains_itself(command: list[str]) -> None:
    result = await conveyor(*command, "--help")
    assert result.returncode == 0
    usage, _, text = result.stdout.partition("\n\n")
    assert usage.startswith("Usage: ")
    assert len(text.split("\n\n")[0].split()) >= 5, result.stdout


async def test_a_job_uploads_steps_with_the_real_agent(database_url: str, tmp_path: Path) -> None:
    """The agent gives the job what `conveyor pipeline upload` needs; the uploaded step runs
    before the step after the `wait`."""
    pipeline = f"""
steps:
  - label: generate
    command: |
      printf 'steps:\\n  - label: generated\\n    command: echo made by $$BUILDKITE_JOB_ID\\n' \\
        | {sys.executable} -m conveyor pipeline upload -
  - wait
  - label: last
    command: echo last
"""
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        running_agents(server, tmp_path / "builds", spawn=2),
        Api(server) as api,
    ):
        build = await api.wait_build(await api.create_build(pipeline))
        assert build.state == p.BuildState.PASSED, build
        assert [s.label or s.kind for s in build.steps] == ["generate", "generated", "wait", "last"]
        jobs = {j.label: j for j in build.jobs}
        assert list(jobs) == ["generate", "generated", "last"]
        assert b"uploaded 1 step from <stdin>" in await api.log(jobs["generate"].id)
        made = await api.log(jobs["generated"].id)
        assert made == f"made by {jobs['generate'].id}\r\n".encode()
        assert jobs["last"].started_at is not None and jobs["generated"].finished_at is not None
        assert jobs["last"].started_at >= jobs["generated"].finished_at
