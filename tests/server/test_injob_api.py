"""What a job does to its own build with its token: meta-data, annotations, steps, cancel.

Real server on loopback (both databases), jobs driven with the agent's own client.
"""

from __future__ import annotations

from collections.abc import Awaitable

import httpx
import pytest

from conveyor import protocol as p
from conveyor.client import JobClient
from conveyor.errors import APIError, JobGoneError
from tests.server.drive import Driver, cmd, finish, steps

pytestmark = pytest.mark.anyio


async def refused(call: Awaitable[object], status: int) -> str:
    with pytest.raises(APIError) as caught:
        await call
    assert caught.value.status == status, caught.value
    return str(caught.value)


ODD_KEYS = ("a/../b", "../x", ".", "..", "a/./b", "50% off?&x=1")


async def test_meta_data_is_shared_by_the_builds_jobs(driver: Driver) -> None:
    await driver.create(steps(cmd("set"), "- wait", cmd("get")))
    _, setter = await driver.take("set")
    assert await setter.get_meta_data("version") is None
    await setter.set_meta_data("version", "1.4.2")
    await setter.set_meta_data("notes/multi line", "a\nb\n")
    await setter.set_meta_data("version", "1.4.3")  # the latest value wins
    # Keys are kept exactly as given, URL-like ones too.
    for key in ODD_KEYS:
        await setter.set_meta_data(key, f"value of {key}")
    for key in ODD_KEYS:
        assert await setter.get_meta_data(key) == f"value of {key}"
    assert await setter.get_meta_data("b") is None
    await finish(setter)
    # Another job of the build, on another agent, sees it; so does the REST API.
    _, getter = await driver.take("get")
    assert await getter.get_meta_data("version") == "1.4.3"
    assert await getter.get_meta_data("notes/multi line") == "a\nb\n"
    assert await getter.meta_data_keys() == sorted(["notes/multi line", "version", *ODD_KEYS])
    build = await driver.refresh()
    assert {k: build.meta_data[k] for k in ("version", "notes/multi line")} == {
        "version": "1.4.3",
        "notes/multi line": "a\nb\n",
    }
    await finish(getter)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (" padded", "x", "starts or ends with a space"),
        ("bell\x07", "x", "control character"),
        ("k" * 256, "x", "at most 255 characters"),
        ("empty", "  ", "is empty"),
        ("huge", "x" * (p.META_DATA_MAX_VALUE + 1), "over 100000 bytes"),
    ],
)
async def test_bad_meta_data_is_refused_and_nothing_stored(
    driver: Driver, key: str, value: str, message: str
) -> None:
    await driver.create(steps(cmd("set")))
    _, job = await driver.take("set")
    text = await refused(job.set_meta_data(key, value), 422)
    assert message in text
    assert (await driver.refresh()).meta_data == {}
    await finish(job)


async def test_another_builds_data_is_out_of_reach(driver: Driver, http: httpx.AsyncClient) -> None:
    """A job's token reaches only its own job's routes, hence only its own build."""
    await driver.create(steps(cmd("mine")))
    mine_spec, mine = await driver.take("mine")
    other = Driver(driver.server, driver.http, driver.api)
    await other.create(steps(cmd("theirs")), slug="other")
    theirs_spec, theirs = await other.take("theirs")
    await theirs.set_meta_data("secret", "42")
    # My token on their job's routes: refused.
    intruder = JobClient(http, mine_spec.token, theirs_spec.id)
    for call in (
        intruder.get_meta_data("secret"),
        intruder.meta_data_keys(),
        intruder.set_meta_data("secret", "0"),
        intruder.annotate(p.AnnotationRequest(body="hi")),
        intruder.cancel_build(),
    ):
        with pytest.raises(JobGoneError) as caught:
            await call
        assert caught.value.status == 401
    assert (await other.refresh()).meta_data == {"secret": "42"}
    assert (await other.refresh()).state == p.BuildState.RUNNING
    # A finished job's token is revoked.
    await finish(mine)
    with pytest.raises(JobGoneError) as caught:
        await mine.get_meta_data("secret")
    assert caught.value.status == 401
    await finish(theirs)


async def test_annotations_are_created_appended_replaced_and_removed(driver: Driver) -> None:
    build = await driver.create(steps(cmd("a"), cmd("b")))
    a_spec, a = await driver.take("a")
    _, b = await driver.take("b")
    await a.annotate(p.AnnotationRequest(body="## Tests\n", style="info", context="tests"))
    await b.annotate(p.AnnotationRequest(body="* b passed\n", context="tests", append=True))
    await a.annotate(p.AnnotationRequest(body="`92 %`", style="success", context="coverage"))
    out = await b.annotate(p.AnnotationRequest(body="**1 flaky**", style="warning"))
    assert (out.context, out.style, out.body) == ("default", "warning", "**1 flaky**")
    # Annotating a context again replaces it.
    await a.annotate(p.AnnotationRequest(body="`93 %`", style="success", context="coverage"))
    listed = await driver.api.http.get(f"/api/v1/pipelines/test/builds/{build.number}/annotations")
    assert listed.status_code == 200
    notes = {n["context"]: (n["style"], n["body"]) for n in listed.json()}
    assert notes == {
        "tests": ("info", "## Tests\n* b passed\n"),  # an append keeps the style
        "coverage": ("success", "`93 %`"),
        "default": ("warning", "**1 flaky**"),
    }
    assert await a.remove_annotation("default") is True
    assert await a.remove_annotation("default") is False
    await a.annotate(p.AnnotationRequest(body="x", context="tests/unit"))
    assert await a.remove_annotation("tests/unit") is True
    listed = await driver.api.http.get(f"/api/v1/pipelines/test/builds/{build.number}/annotations")
    assert [n["context"] for n in listed.json()] == ["tests", "coverage"]
    # A bad style is refused by name.
    r = await driver.http.post(
        f"/agent/v1/jobs/{a_spec.id}/annotations",
        json={"body": "x", "style": "loud"},
        headers={"Authorization": f"Token {a_spec.token}"},
    )
    assert r.status_code == 422 and "style" in r.json()["message"]
    await finish(a)
    await finish(b)


async def test_step_get_and_update(driver: Driver) -> None:
    await driver.create(steps(cmd("deploy", "key: deploy"), "- wait", cmd("after", "key: after")))
    _, job = await driver.take("deploy")
    mine = await job.get_step(None)
    assert (mine.key, mine.label, mine.state, mine.kind) == (
        "deploy",
        "deploy",
        "running",
        "command",
    )
    other = await job.get_step("after")
    assert (other.key, other.state) == ("after", "pending")
    updated = await job.update_step("after", p.StepUpdate(attribute="label", value=":ship: 1.4"))
    assert updated.label == ":ship: 1.4"
    assert ":ship: 1.4" in [s.label for s in (await driver.refresh()).steps]
    message = await refused(job.get_step("nope"), 422)
    assert "no step with key 'nope'" in message
    await finish(job)


async def test_a_job_cancels_its_own_build(driver: Driver) -> None:
    await driver.create(steps(cmd("canceler"), cmd("beside"), "- wait", cmd("never")))
    _, job = await driver.take("canceler")
    await job.cancel_build()
    build = await driver.refresh()
    assert build.state == p.BuildState.CANCELING
    states = {j.label: j.state for j in build.jobs}
    assert states == {
        "canceler": p.JobState.CANCELING,
        "beside": p.JobState.CANCELED,
        "never": p.JobState.CANCELED,
    }
    # While it is being stopped (its pre-exit hook runs then) the job may still write.
    await job.set_meta_data("stopped-by", "canceler")
    await finish(job, -1)
    build = await driver.refresh()
    assert build.state == p.BuildState.CANCELED and build.meta_data == {"stopped-by": "canceler"}
    # Once finished, its token is gone.
    with pytest.raises(JobGoneError):
        await job.cancel_build()
