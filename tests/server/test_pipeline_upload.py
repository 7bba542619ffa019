"""`POST /agent/v1/jobs/{id}/pipelines`: a running job adds steps to its build (pipeline upload).

Authenticated by the job's own token, as `conveyor pipeline upload` calls it from inside a job.
"""

from __future__ import annotations

import httpx
import pytest

from conveyor import protocol as p
from conveyor.client import JobClient
from conveyor.errors import APIError, JobGoneError
from tests.server.drive import Driver, cmd, finish, steps

pytestmark = pytest.mark.anyio


def upload(
    text: str, *, replace: bool = False, upload_id: str | None = None
) -> p.PipelineUploadRequest:
    return p.PipelineUploadRequest(
        pipeline=text, filename="ci/more.yml", replace=replace, upload_id=upload_id
    )


async def rejected(job: JobClient, body: p.PipelineUploadRequest, status: int) -> str:
    with pytest.raises(APIError) as caught:
        await job.upload_pipeline(body)
    assert caught.value.status == status, caught.value
    return str(caught.value)


async def test_uploaded_steps_go_after_the_uploader_and_a_wait_waits_for_them(
    driver: Driver,
) -> None:
    await driver.create(
        steps(cmd("upload"), cmd("beside"), "- wait", cmd("after")), env={"TARGET": "prod"}
    )
    spec, job = await driver.take("upload")
    answer = await job.upload_pipeline(
        upload(
            steps(
                cmd("u1", "key: u1"),
                "- label: u2",
                "  command: deploy $TARGET from build $BUILDKITE_BUILD_NUMBER by $CONVEYOR_JOB_ID",
                "  agents: {queue: u2}",
                "  depends_on: u1",
                "  flavour: mint",
            )
        )
    )
    assert answer.steps_added == 2 and answer.steps_removed == 0
    assert len(answer.warnings) == 1 and "ci/more.yml:" in answer.warnings[0]
    assert "flavour" in answer.warnings[0]

    build = await driver.refresh()
    assert [s.label or s.kind for s in build.steps] == ["upload", "u1", "u2", "beside", "wait",
                                                         "after"]  # fmt: skip
    # Interpolated with the job's environment: the build's env and the job's own facts.
    [u2] = [j for j in build.jobs if j.label == "u2"]
    assert u2.command == f"deploy prod from build {build.number} by {spec.id}"
    # Uploaded steps run at once (beside the uploader); their own depends_on is kept.
    assert await driver.jobs() == {
        "upload": "running",
        "u1": "scheduled",
        "u2": "pending",
        "beside": "scheduled",
        "after": "pending",
    }
    await finish(job)
    await driver.run("beside")
    await driver.run("u1")
    # The wait after the uploader also waits for what it uploaded.
    assert (await driver.jobs())["after"] == "pending"
    assert not await driver.offered("after")
    await driver.run("u2")
    assert (await driver.jobs())["after"] == "scheduled"
    await driver.run("after")
    assert (await driver.refresh()).state == p.BuildState.PASSED


async def test_replace_removes_the_steps_not_started(driver: Driver) -> None:
    await driver.create(steps(cmd("upload"), "- wait", cmd("old"), cmd("older")))
    _, job = await driver.take("upload")
    answer = await job.upload_pipeline(upload(steps(cmd("new")), replace=True))
    assert (answer.steps_added, answer.steps_removed) == (1, 3)
    assert await driver.steps() == {"upload": "running", "new": "running"}
    await finish(job)
    await driver.run("new")
    build = await driver.refresh()
    assert build.state == p.BuildState.PASSED
    assert [j.label for j in build.jobs] == ["upload", "new"]


async def test_rejected_uploads_store_nothing(driver: Driver) -> None:
    await driver.create(steps(cmd("upload", "key: upload"), "- wait", cmd("after")))
    spec, job = await driver.take("upload")
    before = await driver.refresh()

    message = await rejected(job, upload("steps:\n  - command: [unclosed\n", replace=True), 422)
    assert "ci/more.yml:3" in message
    message = await rejected(job, upload(steps(cmd("x", "key: upload"))), 422)
    assert "key 'upload' is already used by a step of this build" in message
    message = await rejected(job, upload(steps(cmd("x", "depends_on: nope"))), 422)
    assert "depends_on names 'nope'" in message
    message = await rejected(
        job, upload("steps:\n  - command: echo ${MISSING:?needs a value}\n", replace=True), 422
    )
    assert "ci/more.yml:2" in message and "needs a value" in message
    after = await driver.refresh()
    assert [(s.id, s.state) for s in after.steps] == [(s.id, s.state) for s in before.steps]
    assert [j.id for j in after.jobs] == [j.id for j in before.jobs]

    # A body the model refuses.
    r = await driver.http.post(
        f"/agent/v1/jobs/{job.job_id}/pipelines",
        json={"pipeline": "", "filename": "x"},
        headers={"Authorization": f"Token {spec.token}"},
    )
    assert r.status_code == 422


async def test_a_retried_upload_adds_nothing_twice(driver: Driver) -> None:
    await driver.create(steps(cmd("upload")))
    _, job = await driver.take("upload")
    body = upload(steps(cmd("once")), upload_id="3f1c")
    first = await job.upload_pipeline(body)
    again = await job.upload_pipeline(body)
    assert first == again and first.steps_added == 1
    assert [j.label for j in (await driver.refresh()).jobs] == ["upload", "once"]
    # Another upload id is another upload (here: a key used twice is fine without keys).
    await job.upload_pipeline(upload(steps(cmd("twice")), upload_id="9a2b"))
    assert [j.label for j in (await driver.refresh()).jobs] == ["upload", "twice", "once"]


async def test_only_the_running_jobs_own_token_may_upload(
    driver: Driver, http: httpx.AsyncClient
) -> None:
    await driver.create(steps(cmd("first"), cmd("second")))
    first, job = await driver.take("first")
    second, other = await driver.take("second")
    # The token of one job does not work for another.
    with pytest.raises(JobGoneError) as caught:
        await JobClient(http, second.token, first.id).upload_pipeline(upload(steps(cmd("x"))))
    assert caught.value.status == 401
    # A finished job's token was revoked.
    await finish(job)
    with pytest.raises(JobGoneError) as caught:
        await job.upload_pipeline(upload(steps(cmd("x"))))
    assert caught.value.status == 401
    await finish(other)
    build = await driver.refresh()
    assert build.state == p.BuildState.PASSED
    assert [j.label for j in build.jobs] == ["first", "second"]
    # An agent's token is not a job token.
    r = await http.post(
        f"/agent/v1/jobs/{first.id}/pipelines",
        json={"pipeline": steps(cmd("x"))},
        headers={"Authorization": "Token nope"},
    )
    assert r.status_code == 401


async def test_a_job_being_canceled_cannot_upload(driver: Driver) -> None:
    build = await driver.create(steps(cmd("upload")))
    _, job = await driver.take("upload")
    r = await driver.api.http.post(f"/api/v1/pipelines/test/builds/{build.number}/cancel")
    assert r.status_code == 200
    message = await rejected(job, upload(steps(cmd("x"))), 409)
    assert "job is canceling" in message


async def test_steps_uploaded_inside_a_group_belong_to_it(driver: Driver) -> None:
    await driver.create(
        "steps:\n"
        "  - group: G\n"
        "    steps:\n"
        "      - label: upload\n"
        "        command: upload\n"
        "        agents: {queue: upload}\n"
        "  - wait\n"
        f"  {cmd('after')}\n"
    )
    _, job = await driver.take("upload")
    assert (await job.upload_pipeline(upload(steps(cmd("u1"))))).steps_added == 1
    await finish(job)
    # The group waits for the uploaded step, and so does the wait after the group.
    assert await driver.steps() == {
        "G": "running",
        "upload": "passed",
        "u1": "running",
        "wait": "pending",
        "after": "pending",
    }
    await driver.run("u1")
    assert (await driver.steps())["G"] == "passed"
    await driver.run("after")
    assert (await driver.refresh()).state == p.BuildState.PASSED
