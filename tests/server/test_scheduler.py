"""Scheduler semantics seen through the APIs: wait, continue_on_failure, depends_on, build state.

Every step names its own queue (`agents: {queue: <label>}`), so the test decides which job
runs when by choosing which agent pings.
"""

from __future__ import annotations

import pytest

from conveyor import protocol as p
from tests.harness import Api
from tests.server.drive import Driver, cmd, steps

pytestmark = pytest.mark.anyio


async def test_steps_after_a_wait_stay_pending_until_the_earlier_ones_finish(
    driver: Driver,
) -> None:
    build = await driver.create(steps(cmd("a"), cmd("b"), "- wait", cmd("c")))
    assert build.state == p.BuildState.SCHEDULED
    assert await driver.states() == {"a": "scheduled", "b": "scheduled", "c": "pending"}
    assert not await driver.offered("c")

    assert build.started_at is None
    await driver.run("a")
    assert await driver.states() == {"a": "finished", "b": "scheduled", "c": "pending"}
    assert (await driver.refresh()).state == p.BuildState.RUNNING
    await driver.run("b")
    assert await driver.states() == {"a": "finished", "b": "finished", "c": "scheduled"}
    await driver.run("c")
    build = await driver.refresh()
    assert build.state == p.BuildState.PASSED
    assert all(j.passed for j in build.jobs)
    assert build.finished_at is not None and build.started_at is not None
    # A build of waits only has nothing to run: it passes at once.
    build = await driver.create(steps("- wait", "- wait"))
    assert (build.jobs, build.state) == ([], p.BuildState.PASSED)


async def test_a_failure_before_a_wait_skips_what_follows(driver: Driver) -> None:
    await driver.create(steps(cmd("a"), cmd("b"), "- wait", cmd("c"), "- wait", cmd("d")))
    await driver.run("a", exit_status=1)
    # b still runs: the build is not settled until it does.
    assert await driver.states() == {
        "a": "finished",
        "b": "scheduled",
        "c": "pending",
        "d": "pending",
    }
    # A step failed while another still runs.
    assert (await driver.refresh()).state == p.BuildState.FAILING
    await driver.run("b")
    assert await driver.states() == {
        "a": "finished",
        "b": "finished",
        "c": "skipped",
        "d": "skipped",
    }
    build = await driver.refresh()
    assert build.state == p.BuildState.FAILED
    assert build.finished_at is not None
    assert not await driver.offered("c")


async def test_continue_on_failure_lets_later_steps_run(driver: Driver) -> None:
    await driver.create(
        steps(cmd("a"), "- wait:", "    continue_on_failure: true", cmd("b"), "- wait", cmd("c"))
    )
    await driver.run("a", exit_status=2)
    assert await driver.states() == {"a": "finished", "b": "scheduled", "c": "pending"}
    await driver.run("b")
    # A wait waits for the steps since the previous wait: b passed, so c runs.
    assert (await driver.states())["c"] == "scheduled"
    await driver.run("c")
    build = await driver.refresh()
    # Every later step ran, but a failed: the build fails.
    assert build.state == p.BuildState.FAILED
    assert [j.passed for j in build.jobs] == [False, True, True]


async def test_depends_on_orders_steps(driver: Driver) -> None:
    await driver.create(
        steps(
            cmd("test", "depends_on: compile"),
            cmd("compile", "key: compile"),
            cmd("lint", "key: lint"),
            cmd("deploy", "depends_on: [compile, lint]"),
        )
    )
    assert await driver.states() == {
        "test": "pending",
        "compile": "scheduled",
        "lint": "scheduled",
        "deploy": "pending",
    }
    await driver.run("compile")
    assert await driver.states() == {
        "test": "scheduled",
        "compile": "finished",
        "lint": "scheduled",
        "deploy": "pending",
    }
    await driver.run("test")
    assert (await driver.states())["deploy"] == "pending"
    await driver.run("lint")
    assert (await driver.states())["deploy"] == "scheduled"
    await driver.run("deploy")
    assert (await driver.refresh()).state == p.BuildState.PASSED


async def test_failed_dependency_skips_its_dependents_only(driver: Driver) -> None:
    await driver.create(
        steps(
            cmd("compile", "key: compile"),
            cmd("test", "depends_on: compile"),
            cmd("docs"),
        )
    )
    await driver.run("compile", exit_status=1)
    assert await driver.states() == {
        "compile": "finished",
        "test": "skipped",
        "docs": "scheduled",
    }
    assert (await driver.refresh()).state == p.BuildState.FAILING
    await driver.run("docs")
    assert (await driver.refresh()).state == p.BuildState.FAILED


async def _rejected(api: Api, pipeline: str, filename: str | None = "ci/pipeline.yml") -> str:
    """Post a pipeline that must be rejected: a 422 whose message is returned."""
    body = (
        {"pipeline": pipeline} if filename is None else {"pipeline": pipeline, "filename": filename}
    )
    r = await api.http.post("/api/v1/pipelines/test/builds", json=body)
    assert r.status_code == 422, r.text
    message: str = r.json()["message"]
    return message


async def test_bad_dependencies_are_rejected_naming_the_line(api: Api) -> None:
    before = (await api.http.get("/api/v1/builds")).json()
    message = await _rejected(
        api,
        "steps:\n"
        "  - command: one\n"
        "    key: one\n"
        "  - label: two\n"
        "    command: two\n"
        "    depends_on: [one, missing]\n",
    )
    assert message.startswith("ci/pipeline.yml:4")
    assert "'missing'" in message and "'two'" in message

    message = await _rejected(
        api,
        "steps:\n"
        "  - key: a\n"
        "    command: a\n"
        "    depends_on: b\n"
        "  - key: b\n"
        "    command: b\n"
        "    depends_on: a\n",
    )
    assert "cycle" in message
    assert message.startswith(("ci/pipeline.yml:2", "ci/pipeline.yml:5")), message

    # A cycle through a wait: a → c (explicit) → wait (implicit) → a (implicit).
    message = await _rejected(
        api, "steps:\n  - key: a\n    command: a\n    depends_on: c\n  - wait\n  - key: c\n"
        "    command: c\n",
    )  # fmt: skip
    assert "cycle" in message and message.startswith("ci/pipeline.yml:")
    # Nothing half-stored: no build, and the next good build is number 1.
    assert (await api.http.get("/api/v1/builds")).json() == before == []
    assert (await api.create_build("steps:\n  - command: ok\n")).number == 1


BAD_YAML = [
    ("steps:\n  - command: [unclosed\n", "ci/pipeline.yml:3"),
    ("steps:\n  - command: a\n  -\tcommand: b\n", "ci/pipeline.yml:3"),
    ("steps: 3\n", "ci/pipeline.yml:1"),
    ("steps:\n  - command: a\n  - bogus: b\n", "ci/pipeline.yml:3"),
    ("steps:\n  - command: a\n    key: x\n  - command: b\n    key: x\n", "ci/pipeline.yml:4"),
    ("# nothing\n", "ci/pipeline.yml:1"),
    ("- wait\n- trigger: ~\n", "ci/pipeline.yml:2"),
]


async def test_bad_pipeline_is_rejected_naming_file_and_line(api: Api) -> None:
    await api.create_build("steps:\n  - command: ok\n")
    before = (await api.http.get("/api/v1/builds")).json()
    for pipeline, where in BAD_YAML:
        message = await _rejected(api, pipeline)
        assert message.startswith(where), (pipeline, message)
    message = await _rejected(api, "steps: 3", filename=None)
    assert message.startswith("pipeline.yml:1")
    assert (await api.http.get("/api/v1/builds")).json() == before
    assert (await api.create_build("steps:\n  - command: ok\n")).number == 2
