"""Unblocking block and input steps, and retrying jobs by hand, through the REST API.

Jobs are driven with the real agent client over the agent API: every command step names its own
queue (`agents: {queue: <label>}`), so the test decides which job runs when.
"""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import protocol as p
from tests.server.drive import Driver, cmd, steps

pytestmark = pytest.mark.anyio


DEPLOY = steps(
    cmd("build"),
    "- block: Deploy?",
    "  key: deploy",
    "  prompt: Ship it?",
    "  fields:",
    "    - text: Release",
    "      key: release",
    "      hint: like 1.2",
    "      format: '[0-9]+\\.[0-9]+'",
    "    - select: Environment",
    "      key: env",
    "      options:",
    "        - {label: Staging, value: staging}",
    "        - {label: Production, value: prod}",
    "    - text: Note",
    "      key: note",
    "      required: false",
    cmd("deploy"),
)


async def test_unblock_sets_meta_data_and_the_build_carries_on(driver: Driver) -> None:
    build = await driver.create(DEPLOY)
    assert [(s.kind, s.state) for s in build.steps] == [
        ("command", "running"),
        ("block", "pending"),
        ("command", "pending"),
    ]
    block = build.steps[1]
    assert (block.key, block.label, block.prompt) == ("deploy", "Deploy?", "Ship it?")
    assert [(f.key, f.kind, f.required) for f in block.fields] == [
        ("release", "text", True),
        ("env", "select", True),
        ("note", "text", False),
    ]
    assert block.fields[0].format == "[0-9]+\\.[0-9]+" and block.fields[0].hint == "like 1.2"
    assert [o.value for o in block.fields[1].options] == ["staging", "prod"]
    assert build.steps[2].depends_on == [block.id]

    await driver.run("build")
    build = await driver.refresh()
    assert build.state == p.BuildState.BLOCKED
    assert await driver.steps() == {"build": "passed", "Deploy?": "blocked", "deploy": "pending"}
    assert not await driver.offered("deploy")

    r = await driver.unblock("deploy", release="1.2", env="prod")
    assert r.status_code == 200, r.text
    unblocked = p.BuildOut.model_validate(r.json())
    assert unblocked.meta_data == {"release": "1.2", "env": "prod"}
    assert unblocked.state == p.BuildState.RUNNING
    assert [s.state for s in unblocked.steps] == ["passed", "passed", "running"]
    assert unblocked.version != build.version
    await driver.run("deploy")
    build = await driver.refresh()
    assert build.state == p.BuildState.PASSED
    assert build.meta_data == {"release": "1.2", "env": "prod"}


async def test_unblock_by_step_id_and_an_input_step_does_not_block_the_build(
    driver: Driver,
) -> None:
    build = await driver.create(steps("- input: Info", "  key: info", cmd("a"), "- wait", cmd("b")))
    info = build.steps[0]
    assert (info.kind, info.state) == ("input", "blocked")
    # An input step only collects values: `a` runs beside it, the build is not blocked.
    assert build.state == p.BuildState.SCHEDULED
    r = await driver.unblock(info.id)
    assert r.status_code == 200, r.text
    after = p.BuildOut.model_validate(r.json())
    # Only a step's state changed (not the build's, not a job's): the version says so.
    assert after.state == build.state and after.jobs == build.jobs and after.meta_data == {}
    assert after.version != build.version
    await driver.run("a")
    await driver.run("b")
    assert (await driver.refresh()).state == p.BuildState.PASSED


async def test_a_build_waiting_only_for_an_input_step_is_blocked(driver: Driver) -> None:
    await driver.create(steps("- input: Info", "  key: info", cmd("a"), "- wait", cmd("b")))
    await driver.run("a")
    # The wait waits for the input step, and nothing else can run.
    assert (await driver.refresh()).state == p.BuildState.BLOCKED
    assert (await driver.unblock("info")).status_code == 200
    await driver.run("b")
    assert (await driver.refresh()).state == p.BuildState.PASSED


async def test_unblock_errors_are_clear_and_change_nothing(driver: Driver) -> None:
    build = await driver.create(DEPLOY)

    async def refused(status: int, step: str, **fields: Any) -> str:
        r = await driver.unblock(step, **fields)
        assert r.status_code == status, r.text
        message: str = r.json()["message"]
        return message

    assert "no block or input step 'nope'" in await refused(404, "nope")
    # A command step is not something to unblock.
    assert "no block or input step" in await refused(404, build.steps[0].id)
    # Its dependencies have not finished.
    message = await refused(409, "deploy", release="1.0", env="prod")
    assert "pending" in message and "not finished" in message
    await driver.run("build")
    assert (await driver.refresh()).state == p.BuildState.BLOCKED

    message = await refused(422, "deploy", env="prod")
    assert message == "field 'release' (Release) is required"
    message = await refused(422, "deploy", release="1.0", env="moon")
    assert "'moon' is not an option of field 'env'" in message and "prod" in message
    message = await refused(422, "deploy", release="one", env="prod")
    assert "'one' does not match the format of field 'release'" in message
    message = await refused(422, "deploy", release="1.0", env="prod", colour="red")
    assert "unknown field 'colour'" in message
    r = await driver.api.http.post(
        "/api/v1/pipelines/test/builds/1/steps/deploy/unblock", json={"fields": {"env": 3}}
    )
    assert r.status_code == 422
    r = await driver.api.http.post(
        "/api/v1/pipelines/test/builds/9/steps/deploy/unblock", json={"fields": {}}
    )
    assert r.status_code == 404 and r.json()["message"] == "no build test#9"

    build = await driver.refresh()
    assert build.state == p.BuildState.BLOCKED and build.meta_data == {}
    assert build.steps[1].state == "blocked"

    r = await driver.unblock("deploy", release="1.0", env="staging", note="")
    assert r.status_code == 200, r.text
    assert p.BuildOut.model_validate(r.json()).meta_data == {"release": "1.0", "env": "staging"}
    # Once is enough.
    assert "passed, not blocked" in await refused(409, "deploy", release="1.0", env="prod")


async def test_manual_retry_of_a_failed_job_lets_the_build_carry_on(driver: Driver) -> None:
    await driver.create(steps(cmd("a"), cmd("b"), "- wait", cmd("c")))
    first = await driver.run("a", exit_status=1)
    await driver.run("b")
    build = await driver.refresh()
    assert build.state == p.BuildState.FAILED
    assert await driver.steps() == {"a": "failed", "b": "passed", "wait": "not_run", "c": "not_run"}

    r = await driver.retry(first.id)
    assert r.status_code == 201, r.text
    retried = p.JobOut.model_validate(r.json())
    assert (retried.label, retried.attempt, retried.state) == ("a", 2, p.JobState.SCHEDULED)
    assert retried.id != first.id and retried.step_key is None
    build = await driver.refresh()
    assert build.state == p.BuildState.RUNNING and build.finished_at is None
    # The first attempt stays visible, as it ended.
    assert [(j.label, j.attempt, j.state.value) for j in build.jobs if j.label == "a"] == [
        ("a", 1, "finished"),
        ("a", 2, "scheduled"),
    ]
    assert not await driver.offered("c")

    second = await driver.run("a")
    assert second.id == retried.id
    assert await driver.steps() == {"a": "passed", "b": "passed", "wait": "passed", "c": "running"}
    await driver.run("c")
    build = await driver.refresh()
    assert build.state == p.BuildState.PASSED

    # An attempt that was retried is not retried again.
    r = await driver.retry(first.id)
    assert r.status_code == 409 and "already retried (attempt 2)" in r.json()["message"]


async def test_manual_retry_refused(driver: Driver) -> None:
    build = await driver.create(
        steps(
            cmd("once", "retry:", "    manual:", "      allowed: false",
                "      reason: deploys run once"),
            cmd("ok"),
            cmd("again", "retry:", "    manual:", "      permit_on_passed: true"),
            cmd("slow"),
        )
    )  # fmt: skip
    slow = next(j for j in build.jobs if j.label == "slow")
    r = await driver.retry(slow.id)
    assert r.status_code == 409
    assert "is scheduled: only finished jobs can be retried" in r.json()["message"]

    once = await driver.run("once", exit_status=3)
    r = await driver.retry(once.id)
    assert r.status_code == 409
    assert r.json()["message"] == f"job {once.id} cannot be retried: deploys run once"

    ok = await driver.run("ok")
    r = await driver.retry(ok.id)
    assert r.status_code == 409
    assert "passed; its step does not permit retrying passed jobs" in r.json()["message"]

    again = await driver.run("again")
    r = await driver.retry(again.id)
    assert r.status_code == 201, r.text
    assert p.JobOut.model_validate(r.json()).attempt == 2

    r = await driver.retry("no-such-job")
    assert r.status_code == 404 and r.json()["message"] == "no job no-such-job"
    jobs = [(j.label, j.attempt) for j in (await driver.refresh()).jobs]
    assert jobs.count(("once", 2)) == 0 and jobs.count(("ok", 2)) == 0


async def test_soft_failed_job_is_marked(driver: Driver) -> None:
    await driver.create(steps(cmd("flaky", "soft_fail: [{exit_status: 2}]"), "- wait", cmd("b")))
    await driver.run("flaky", exit_status=2)
    build = await driver.refresh()
    [flaky] = [j for j in build.jobs if j.label == "flaky"]
    assert flaky.soft_failed and not flaky.passed
    await driver.run("b")
    assert (await driver.refresh()).state == p.BuildState.PASSED
