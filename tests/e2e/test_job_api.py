"""`conveyor env` and `conveyor redactor add` inside jobs run by a real server and agents: env
changes reach the phases after the command; protected variables stay; added secrets are
redacted from the rest of the log; with and without the job executor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conveyor import protocol as p
from tests.cli.procs import clean_env, conveyor
from tests.harness import Api, running_agents, running_server

pytestmark = pytest.mark.anyio

CONVEYOR = f"{sys.executable} -m conveyor"
SECRET = "fetched-at-run-time-0451"

PIPELINE = f"""\
steps:
  - label: api
    env:
      DROP_ME: "here"
    command: |
      {CONVEYOR} env set DEPLOY=staging "SPACED=a b"
      {CONVEYOR} env unset DROP_ME
      test "$$({CONVEYOR} env get DEPLOY)" = staging
      {CONVEYOR} env dump | grep -q '"DEPLOY": "staging"'
      if {CONVEYOR} env set CONVEYOR_AGENT_ACCESS_TOKEN=stolen 2>err.txt; then exit 9; fi
      grep -q "cannot be changed by a job" err.txt
      if {CONVEYOR} env get NOT_THERE 2>/dev/null; then exit 8; fi
      echo "before: {SECRET}"
      echo {SECRET} | {CONVEYOR} redactor add
      echo "after: {SECRET}"
      echo '{{"a": "json-secret-77777", "n": 1}}' | {CONVEYOR} redactor add --format json
      echo "json: json-secret-77777"
"""


async def test_env_and_redactor_through_the_job_api(database_url: str, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "post-command").write_text(
        'echo "POST DEPLOY=$DEPLOY SPACED=$SPACED DROP=${DROP_ME-gone}"\n'
    )
    async with (
        running_server(database_url, tmp_path / "server") as handle,
        running_agents(handle, tmp_path / "builds", spawn=1, hooks_path=hooks),
        Api(handle) as api,
    ):
        build = await api.wait_build(await api.create_build(PIPELINE))
        (job,) = build.jobs
        log = (await api.log(job.id)).decode()
        assert build.state == p.BuildState.PASSED, log
        assert "POST DEPLOY=staging SPACED=a b DROP=gone" in log
        # Output written before the value was added is already sent; after it, never.
        assert f"before: {SECRET}" in log
        assert "after: [REDACTED]" in log
        assert "json: [REDACTED]" in log
        assert log.count(SECRET) == 1


async def test_job_api_without_the_executor(database_url: str, tmp_path: Path) -> None:
    """No hooks, plugins or repository: the command runs directly, and the API still works
    for it (there are no later phases to see env changes)."""
    pipeline = f"""\
steps:
  - command: |
      {CONVEYOR} env dump | grep -q CONVEYOR_JOB_ID
      {CONVEYOR} env set X=1 && test "$$({CONVEYOR} env get X)" = 1
      {CONVEYOR} redactor add direct-secret-123
      echo "said direct-secret-123"
"""
    async with (
        running_server(database_url, tmp_path / "server") as handle,
        running_agents(handle, tmp_path / "builds", spawn=1),
        Api(handle) as api,
    ):
        build = await api.wait_build(await api.create_build(pipeline))
        log = (await api.log(build.jobs[0].id)).decode()
        assert build.state == p.BuildState.PASSED, log
        assert "said [REDACTED]" in log


HOOKED = f"""\
steps:
  - command: |
      test "$$FROM_HOOK" = "set by a program"
      echo "{SECRET}"
"""
# A hook that is a program, not a shell script: `conveyor env` is its way to change the env.
PROGRAM_HOOK = f"""#!{sys.executable}
import subprocess, sys
run = [sys.executable, "-m", "conveyor"]
subprocess.run([*run, "env", "set", "FROM_HOOK=set by a program"], check=True)
subprocess.run([*run, "redactor", "add", "{SECRET}"], check=True)
"""


async def test_env_set_in_a_hook_reaches_the_command_in_conveyor_run(tmp_path: Path) -> None:
    work = tmp_path / "work"
    hooks = work / ".conveyor" / "hooks"
    hooks.mkdir(parents=True)
    hook = hooks / "pre-command"
    hook.write_text(PROGRAM_HOOK)
    hook.chmod(0o755)
    (work / "pipeline.yml").write_text(HOOKED)
    result = await conveyor("run", "--agents", "1", cwd=work, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running repository pre-command hook" in result.stdout
    assert SECRET not in result.stdout
    assert "[REDACTED]" in result.stdout


async def test_a_secret_exported_by_a_hook_is_redacted(database_url: str, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "environment").write_text("export DEPLOY_API_KEY=from-the-vault-31337\n")
    pipeline = 'steps:\n  - command: echo "key is $$DEPLOY_API_KEY"\n'
    async with (
        running_server(database_url, tmp_path / "server") as handle,
        running_agents(handle, tmp_path / "builds", spawn=1, hooks_path=hooks),
        Api(handle) as api,
    ):
        build = await api.wait_build(await api.create_build(pipeline))
        log = (await api.log(build.jobs[0].id)).decode()
        assert build.state == p.BuildState.PASSED, log
        assert "key is [REDACTED]" in log
        assert "from-the-vault" not in log


async def test_outside_a_job_the_commands_say_so() -> None:
    for args in (("env", "dump"), ("redactor", "add", "whatever-value")):
        result = await conveyor(*args, env=clean_env())
        assert result.returncode == 1
        assert "works only inside a job run by a Conveyor agent" in result.stderr
        assert "Traceback" not in result.stderr
