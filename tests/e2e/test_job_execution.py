"""Job execution end to end: a real server and agent run a pipeline whose jobs check out a git
repository, use a plugin from a local git repository, and run agent and repository hooks; an
agent's `pre-bootstrap` hook refuses a job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor import protocol as p
from tests.harness import Api, running_agents, running_server
from tests.runner.test_bootstrap import git, make_repo

pytestmark = pytest.mark.anyio


def plugin_repo(path: Path) -> str:
    make_repo(
        path,
        {
            "hooks/pre-command": 'echo "PLUGIN SAYS $CONVEYOR_PLUGIN_SHOUT_WORD"\n'
            "export PLUGIN_WAS_HERE=1\n"
        },
    )
    git(path, "tag", "v1.0.0")
    return str(path)


async def test_checkout_plugin_and_hooks_through_server_and_agent(
    database_url: str, tmp_path: Path
) -> None:
    repo = tmp_path / "app"
    sha = make_repo(
        repo,
        {
            "app.txt": "the app\n",
            ".conveyor/hooks/post-checkout": 'echo "REPO HOOK in $(basename $PWD)"\n',
        },
    )
    plugin = plugin_repo(tmp_path / "shout-buildkite-plugin")
    hooks = tmp_path / "agent-hooks"
    hooks.mkdir()
    (hooks / "environment").write_text("export FROM_AGENT_HOOK=agent\n")
    pipeline = f"""\
steps:
  - label: build
    # `$$`: the job's shell expands these, not the pipeline upload.
    command: 'echo "$$(cat app.txt) $$FROM_AGENT_HOOK $$PLUGIN_WAS_HERE $$BUILDKITE_REPO"'
    plugins:
      - {plugin}#v1.0.0:
          word: hello
    artifact_paths: app.txt
"""
    async with (
        running_server(database_url, tmp_path / "server") as handle,
        running_agents(
            handle,
            tmp_path / "builds",
            spawn=1,
            hooks_path=hooks,
            plugins_path=tmp_path / "plugins",
        ),
        Api(handle) as api,
    ):
        r = await api.http.put("/api/v1/pipelines/app", json={"repository": f"file://{repo}"})
        assert r.status_code in (200, 201), r.text
        build = await api.create_build(pipeline, slug="app", commit=sha)
        build = await api.wait_build(build)
        (job,) = build.jobs
        log = (await api.log(job.id)).decode()
        assert build.state == p.BuildState.PASSED, log
        assert "REPO HOOK in app" in log
        assert "PLUGIN SAYS hello" in log
        assert f"the app agent 1 file://{repo}" in log
        r = await api.http.get(f"/api/v1/pipelines/app/builds/{build.number}/artifacts")
        assert r.status_code == 200, r.text
        assert [a["path"] for a in r.json()] == ["app.txt"]
        # Checked out at the build's commit, in <build-path>/<agent-name>/<pipeline>.
        (agent_dir,) = (tmp_path / "builds").iterdir()
        assert git(agent_dir / "app", "rev-parse", "HEAD") == sha


async def test_pre_bootstrap_hook_refuses_a_job(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Something only the agent's environment holds: the hook must not see it.
    monkeypatch.setenv("AGENT_ONLY_SETTING", "agent-private")
    hooks = tmp_path / "agent-hooks"
    hooks.mkdir()
    hook = hooks / "pre-bootstrap"
    hook.write_text(
        "#!/bin/sh\n"
        f'cp "$CONVEYOR_JOB_ENV_FILE" {tmp_path}/seen-$CONVEYOR_JOB_ID.json\n'
        f"env > {tmp_path}/hook-env-$CONVEYOR_JOB_ID.txt\n"
        'test "$(cat "$CONVEYOR_JOB_ENV_FILE" | grep -c REFUSE_ME)" = 0\n'
    )
    hook.chmod(0o755)
    marker = tmp_path / "ran"
    pipeline = f"""\
steps:
  - label: refused
    command: touch {marker}
    env:
      REFUSE_ME: "1"
  - label: allowed
    command: echo allowed
"""
    async with (
        running_server(database_url, tmp_path / "server") as handle,
        running_agents(handle, tmp_path / "builds", spawn=1, hooks_path=hooks),
        Api(handle) as api,
    ):
        build = await api.wait_build(await api.create_build(pipeline))
        jobs = {j.label: j for j in build.jobs}
        refused, allowed = jobs["refused"], jobs["allowed"]
        assert refused.exit_status == -1
        assert refused.signal_reason == "agent_refused"
        assert b"pre-bootstrap hook refused it" in await api.log(refused.id)
        assert not marker.exists()
        assert allowed.exit_status == 0
        assert build.state == p.BuildState.FAILED
        # The hook saw each job's env before deciding.
        seen = json.loads((tmp_path / f"seen-{refused.id}.json").read_text())
        assert seen["REFUSE_ME"] == "1"
        assert seen["CONVEYOR_LABEL"] == "refused"
        assert (tmp_path / f"seen-{allowed.id}.json").exists()
        hook_env = (tmp_path / f"hook-env-{refused.id}.txt").read_text()
        assert "AGENT_ONLY_SETTING" not in hook_env
        assert f"CONVEYOR_JOB_ID={refused.id}" in hook_env


async def test_agent_max_log_size_cuts_the_stored_log(database_url: str, tmp_path: Path) -> None:
    pipeline = "steps:\n  - command: head -c 20000 /dev/zero | tr '\\\\0' x; echo; echo END\n"
    async with (
        running_server(database_url, tmp_path / "server") as handle,
        running_agents(handle, tmp_path / "builds", spawn=1, max_log_size=4096),
        Api(handle) as api,
    ):
        build = await api.wait_build(await api.create_build(pipeline))
        (job,) = build.jobs
        log = await api.log(job.id)
        assert build.state == p.BuildState.PASSED  # the job goes on to its end
        assert b"the log reached its maximum size of 4096 bytes" in log
        assert b"END" not in log
        assert log.count(b"x") < 4096


async def test_a_job_the_agent_cannot_prepare_fails_with_the_reason_in_its_log(
    database_url: str, tmp_path: Path
) -> None:
    """The build path cannot even be looked at (a name too long for the file system): the
    job ends -1 (`process_run_error`) saying why, and its command never runs."""
    marker = tmp_path / "ran"
    async with (
        running_server(database_url, tmp_path / "server") as handle,
        running_agents(handle, tmp_path / ("x" * 300), spawn=1),
        Api(handle) as api,
    ):
        build = await api.create_build(f"steps:\n  - command: touch {marker}\n")
        build = await api.wait_build(build)
        (job,) = build.jobs
        log = (await api.log(job.id)).decode()
    assert (job.exit_status, job.signal_reason) == (-1, p.SignalReason.PROCESS_RUN_ERROR)
    assert log.startswith("conveyor: this job was not run: it could not be prepared: ")
    assert "File name too long" in log
    assert not marker.exists()
