"""The build DAG, driven through the scheduler on a real database (both backends).

Jobs are moved along with the same compare-and-set transitions the agent API uses, so each
test decides exactly which job ends when and how.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from conveyor.errors import InvalidStateError, PipelineError
from conveyor.protocol import BuildState
from conveyor.report import describe
from conveyor.server import buildstate, scheduler
from conveyor.server.dispatcher import claim_job
from conveyor.server.rest_api import build_out
from conveyor.server.retries import retry_if_asked, retry_job
from conveyor.server.unblock import unblock_step
from conveyor.server.uploads import upload_pipeline
from conveyor.storage import Store
from conveyor.storage.queries.base import utcnow
from conveyor.storage.rows import BuildRow, JobRow
from tests.storage.builders import insert_agent

pytestmark = pytest.mark.anyio


class Dag:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.build_id = ""

    async def create(self, text: str, *, slug: str = "p", **kw: Any) -> BuildRow:
        prepared = scheduler.prepare_build(slug, textwrap.dedent(text), **kw)
        async with self.store.transaction() as tx:
            build = await scheduler.store_build(tx, prepared)
        self.build_id = build.id
        return build

    async def build(self, build_id: str | None = None) -> BuildRow:
        async with self.store.transaction() as tx:
            return await tx.get_build(build_id or self.build_id)

    async def steps(self) -> dict[str, str]:
        return {s.label or s.kind: s.state for s in (await self.build()).steps}

    async def jobs(self) -> dict[str, str]:
        """Latest attempt of each job, by label."""
        build = await self.build()
        return {j.label: j.state for j in buildstate.latest_attempts(build.jobs)}

    async def job(self, label: str) -> JobRow:
        build = await self.build()
        return next(j for j in buildstate.latest_attempts(build.jobs) if j.label == label)

    async def finish(self, label: str, exit_status: int = 0, *, signal: str | None = None) -> None:
        """The latest attempt of the job `label` runs and ends with `exit_status`."""
        job = await self.job(label)
        assert job.state == "scheduled", (label, job.state)
        async with self.store.transaction() as tx:
            for old, new in (("scheduled", "assigned"), ("assigned", "accepted")):
                await tx.require_transition(job.id, [old], new)
            await tx.require_transition(job.id, ["accepted"], "running", started_at=utcnow())
            await tx.require_transition(
                job.id,
                ["running"],
                "finished",
                exit_status=exit_status,
                signal=signal,
                finished_at=utcnow(),
            )
            await retry_if_asked(tx, await tx.get_job(job.id))
            await scheduler.advance_build(tx, job.build_id)

    async def state(self) -> str:
        return (await self.build()).state


@pytest.fixture
def dag(store: Store) -> Dag:
    return Dag(store)


async def test_depends_on_allow_failure_runs_after_a_failed_step(dag: Dag) -> None:
    await dag.create(
        """
        steps:
          - {label: a, key: a, command: a}
          - {label: b, command: b, depends_on: [{step: a, allow_failure: true}]}
          - {label: c, command: c, depends_on: a}
        """
    )
    await dag.finish("a", 1)
    assert await dag.steps() == {"a": "failed", "b": "running", "c": "not_run"}
    assert await dag.state() == BuildState.FAILING
    await dag.finish("b")
    assert await dag.state() == BuildState.FAILED


async def test_soft_fail_lets_the_step_pass_for_the_listed_statuses(dag: Dag) -> None:
    await dag.create(
        """
        steps:
          - {label: any, command: x, soft_fail: true}
          - {label: three, command: x, soft_fail: [{exit_status: 3}]}
          - wait
          - {label: after, command: x}
        """
    )
    await dag.finish("any", 1)
    await dag.finish("three", 3)
    assert (await dag.job("any")).soft_failed and (await dag.job("three")).soft_failed
    assert await dag.jobs() == {"any": "finished", "three": "finished", "after": "scheduled"}
    await dag.finish("after")
    assert await dag.state() == BuildState.PASSED

    await dag.create("steps:\n  - {label: three, command: x, soft_fail: [{exit_status: 3}]}\n")
    await dag.finish("three", 4)
    assert not (await dag.job("three")).soft_failed
    assert await dag.state() == BuildState.FAILED


async def test_automatic_retry_keeps_earlier_attempts(dag: Dag) -> None:
    await dag.create(
        """
        steps:
          - label: flaky
            command: x
            retry: {automatic: [{exit_status: 2, limit: 2}]}
        """
    )
    await dag.finish("flaky", 2)
    await dag.finish("flaky", 2)
    await dag.finish("flaky", 0)
    build = await dag.build()
    assert [(j.attempt, j.exit_status) for j in build.jobs] == [(1, 2), (2, 2), (3, 0)]
    assert build.state == BuildState.PASSED


async def test_retry_by_signal(dag: Dag) -> None:
    await dag.create(
        "steps:\n  - {label: k, command: x, retry: {automatic: [{signal: kill, limit: 1}]}}\n"
    )
    await dag.finish("k", 137, signal="SIGKILL")
    assert (await dag.job("k")).attempt == 2
    await dag.finish("k", 137, signal="SIGTERM")
    assert await dag.state() == BuildState.FAILED


async def test_manual_retry_carries_the_build_on(dag: Dag, store: Store) -> None:
    await dag.create("steps:\n  - {label: a, command: a}\n  - wait\n  - {label: b, command: b}\n")
    await dag.finish("a", 1)
    assert await dag.state() == BuildState.FAILED
    assert (await dag.steps())["b"] == "not_run"
    first = await dag.job("a")
    async with store.transaction() as tx:
        again = await retry_job(tx, first.id)
    assert again.attempt == 2 and await dag.state() == BuildState.RUNNING
    with pytest.raises(InvalidStateError, match="already retried"):
        async with store.transaction() as tx:
            await retry_job(tx, first.id)
    await dag.finish("a")
    assert await dag.jobs() == {"a": "finished", "b": "scheduled"}
    await dag.finish("b")
    build = await dag.build()
    assert build.state == BuildState.PASSED and build.finished_at is not None
    passed = await dag.job("b")
    with pytest.raises(InvalidStateError, match="passed"):
        async with store.transaction() as tx:
            await retry_job(tx, passed.id)


async def test_manual_retry_can_be_refused(dag: Dag, store: Store) -> None:
    await dag.create(
        """
        steps:
          - label: deploy
            command: x
            retry: {manual: {allowed: false, reason: "deploys are not repeated"}}
        """
    )
    await dag.finish("deploy", 1)
    failed = await dag.job("deploy")
    with pytest.raises(InvalidStateError, match="deploys are not repeated"):
        async with store.transaction() as tx:
            await retry_job(tx, failed.id)


async def test_matrix_times_parallelism_makes_every_job(dag: Dag) -> None:
    build = await dag.create(
        """
        steps:
          - label: "test {{matrix.os}}"
            command: "run --os {{matrix.os}} --py {{matrix.py}}"
            parallelism: 2
            env: {OS: "{{matrix.os}}"}
            matrix:
              setup: {os: [linux, mac], py: ["3.11", "3.12"]}
              adjustments:
                - with: {os: mac, py: "3.11"}
                  skip: true
        """
    )
    jobs = [(j.label, j.command, j.env["OS"], j.env["BUILDKITE_PARALLEL_JOB"]) for j in build.jobs]
    assert len(jobs) == 6
    assert ("test linux (1/2)", "run --os linux --py 3.11", "linux", "0") in jobs
    assert ("test mac (2/2)", "run --os mac --py 3.12", "mac", "1") in jobs
    assert not any("mac --py 3.11" in command for _, command, _, _ in jobs)
    assert {j.env["BUILDKITE_PARALLEL_JOB_COUNT"] for j in build.jobs} == {"2"}


async def test_group_orders_its_steps_and_stands_for_them(dag: Dag) -> None:
    await dag.create(
        """
        steps:
          - {label: first, key: first, command: x}
          - group: tests
            key: tests
            depends_on: first
            steps:
              - {label: unit, command: x}
              - wait
              - {label: integration, command: x}
          - {label: report, command: x, depends_on: tests}
        """
    )
    assert await dag.jobs() == {
        "first": "scheduled",
        "unit": "pending",
        "integration": "pending",
        "report": "pending",
    }
    await dag.finish("first")
    assert (await dag.jobs())["unit"] == "scheduled"
    assert (await dag.jobs())["integration"] == "pending"
    await dag.finish("unit")
    assert (await dag.jobs())["report"] == "pending"  # the group is not done yet
    await dag.finish("integration")
    assert (await dag.steps())["tests"] == "passed"
    await dag.finish("report")
    assert await dag.state() == BuildState.PASSED


async def test_block_step_blocks_until_unblocked_with_fields(dag: Dag, store: Store) -> None:
    await dag.create(
        """
        steps:
          - {label: build, command: x}
          - block: Release?
            key: release
            fields:
              - select: Channel
                key: channel
                options: [{label: Beta, value: beta}, {label: Stable, value: stable}]
              - {text: Notes, key: notes, required: false}
          - {label: deploy, command: x}
        """
    )
    await dag.finish("build")
    assert (await dag.steps())["Release?"] == "blocked"
    assert await dag.state() == BuildState.BLOCKED
    with pytest.raises(PipelineError, match="required"):
        async with store.transaction() as tx:
            await unblock_step(tx, dag.build_id, "release", {})
    with pytest.raises(PipelineError, match="not an option"):
        async with store.transaction() as tx:
            await unblock_step(tx, dag.build_id, "release", {"channel": "nightly"})
    async with store.transaction() as tx:
        await unblock_step(tx, dag.build_id, "release", {"channel": "beta"})
    build = await dag.build()
    assert build.meta_data == {"channel": "beta"}
    assert build.state == BuildState.RUNNING
    assert (await dag.jobs())["deploy"] == "scheduled"
    with pytest.raises(InvalidStateError, match="not blocked"):
        async with store.transaction() as tx:
            await unblock_step(tx, dag.build_id, "release", {"channel": "beta"})


async def test_input_step_is_not_a_barrier(dag: Dag, store: Store) -> None:
    await dag.create(
        """
        steps:
          - input: Who?
            key: who
            fields: [{text: Name, key: name, format: "[a-z]+"}]
          - {label: meanwhile, command: x}
          - {label: after, command: x, depends_on: who}
        """
    )
    assert await dag.jobs() == {"meanwhile": "scheduled", "after": "pending"}
    await dag.finish("meanwhile")
    assert await dag.state() == BuildState.BLOCKED
    with pytest.raises(PipelineError, match="format"):
        async with store.transaction() as tx:
            await unblock_step(tx, dag.build_id, "who", {"name": "Bob 1"})
    async with store.transaction() as tx:
        await unblock_step(tx, dag.build_id, "who", {"name": "bob"})
    await dag.finish("after")
    assert await dag.state() == BuildState.PASSED


async def test_trigger_waits_for_the_triggered_build(dag: Dag, store: Store) -> None:
    async with store.transaction() as tx:
        await tx.upsert_pipeline(
            "deploy", steps="steps:\n  - {label: ship, command: echo $$WHERE}\n"
        )
    await dag.create(
        """
        steps:
          - trigger: deploy
            label: go
            build: {message: shipping, env: {WHERE: prod}, meta_data: {why: test}}
          - {label: after, command: x}
          - trigger: deploy
            async: true
            depends_on: ~
        """
    )
    steps = (await dag.build()).steps
    waited, fire_and_forget = steps[0], steps[2]
    assert waited.state == "running" and fire_and_forget.state == "passed"
    child_id = waited.config["triggered_build"]["id"]
    child = await dag.build(child_id)
    assert (child.pipeline_slug, child.message, child.source) == ("deploy", "shipping", "trigger")
    assert child.meta_data == {"why": "test"} and child.env["WHERE"] == "prod"
    assert child.jobs[0].command == "echo $WHERE"
    # The step after the trigger waits for the triggered build, which runs on its own.
    assert (await dag.jobs())["after"] == "scheduled"
    job = child.jobs[0]
    async with store.transaction() as tx:
        for old, new in (
            ("scheduled", "assigned"),
            ("assigned", "accepted"),
            ("accepted", "running"),
        ):
            await tx.require_transition(job.id, [old], new)
        await tx.require_transition(job.id, ["running"], "finished", exit_status=1)
        await scheduler.advance_build(tx, child.id)
    assert (await dag.build(child_id)).state == BuildState.FAILED
    assert (await dag.steps())["go"] == "failed"


async def test_trigger_of_an_unknown_pipeline_fails_the_step(dag: Dag) -> None:
    await dag.create("steps:\n  - {trigger: nowhere, label: t}\n")
    build = await dag.build()
    assert build.state == BuildState.FAILED
    assert "no pipeline 'nowhere'" in build.steps[0].config["error"]


async def test_if_branches_and_skip_decide_at_run_time(dag: Dag) -> None:
    text = """
        steps:
          - {label: main-only, command: x, if: build.branch == "main"}
          - {label: release, command: x, branches: "release-* !release-old"}
          - {label: skipped, command: x, skip: "not today"}
          - {label: always, command: x}
          - wait
          # `$$` keeps the expansion for the evaluator, as a Buildkite pipeline would write it.
          - {label: bad, command: x, if: '$${NOPE:?} == "x"'}
        """
    await dag.create(text, branch="release-1")
    assert await dag.steps() == {
        "main-only": "skipped",
        "release": "running",
        "skipped": "skipped",
        "always": "running",
        "wait": "pending",
        "bad": "pending",
    }
    await dag.finish("release")
    await dag.finish("always")
    build = await dag.build()
    # `${NOPE:?}` is only evaluated when the step could run: the step fails, naming why.
    assert build.steps[-1].state == "failed" and "NOPE" in build.steps[-1].config["error"]
    assert build.state == BuildState.FAILED
    await dag.create(text, branch="main")
    assert (await dag.steps())["main-only"] == "running"
    await dag.create(text, branch="release-old")
    assert (await dag.steps())["release"] == "skipped"


async def test_cancel_on_build_failing_stops_running_jobs(dag: Dag) -> None:
    await dag.create(
        """
        steps:
          - {label: long, command: x, cancel_on_build_failing: true}
          - {label: other, command: x}
          - {label: breaks, command: x}
        """
    )
    await dag.finish("breaks", 1)
    jobs = await dag.jobs()
    assert jobs["long"] == "canceled" and jobs["other"] == "scheduled"


async def test_concurrency_group_across_builds_in_order(dag: Dag, store: Store) -> None:
    text = "steps:\n  - {label: deploy, command: x, concurrency: 1, concurrency_group: prod}\n"
    first = await dag.create(text)
    second = await dag.create(text)
    async with store.transaction() as tx:
        a1 = await tx.get_agent(await insert_agent(tx, "a1"))
        a2 = await tx.get_agent(await insert_agent(tx, "a2"))
    async with store.transaction() as tx:
        taken = await claim_job(tx, a1)
    assert taken is not None and taken.build_id == first.id
    async with store.transaction() as tx:
        assert await claim_job(tx, a2) is None  # the group is full
    async with store.transaction() as tx:
        await tx.require_transition(taken.id, ["assigned"], "accepted")
        await tx.require_transition(taken.id, ["accepted"], "running")
        await tx.require_transition(taken.id, ["running"], "finished", exit_status=0)
        await tx.set_agent_job(a1.id, None)
    async with store.transaction() as tx:
        nxt = await claim_job(tx, a2)
    assert nxt is not None and nxt.build_id == second.id


async def test_priority_orders_dispatch(dag: Dag, store: Store) -> None:
    await dag.create(
        "steps:\n  - {label: low, command: x}\n  - {label: high, command: x, priority: 5}\n"
    )
    async with store.transaction() as tx:
        agent = await tx.get_agent(await insert_agent(tx, "a"))
        job = await claim_job(tx, agent)
    assert job is not None and job.label == "high"


async def test_upload_inserts_steps_after_the_uploader(dag: Dag, store: Store) -> None:
    await dag.create(
        """
        steps:
          - {label: uploader, key: up, command: upload}
          - {label: beside, command: x}
          - wait
          - {label: last, command: x}
        """
    )
    uploader = await dag.job("uploader")
    async with store.transaction() as tx:
        await tx.require_transition(uploader.id, ["scheduled"], "assigned")
        await tx.require_transition(uploader.id, ["assigned"], "accepted")
        await tx.require_transition(uploader.id, ["accepted"], "running")
        build, _ = await upload_pipeline(
            tx,
            await tx.get_job(uploader.id),
            "steps:\n  - {label: new-$$X$X, command: x}\n"
            "  - {label: after-up, command: x, depends_on: up}\n",
            filename="up.yml",
            env={"X": "1"},
        )
    assert [s.label or s.kind for s in build.steps] == [
        "uploader",
        "new-$X1",
        "after-up",
        "beside",
        "wait",
        "last",
    ]
    assert (await dag.jobs())["new-$X1"] == "scheduled"
    async with store.transaction() as tx:
        await tx.require_transition(uploader.id, ["running"], "finished", exit_status=0)
        await scheduler.advance_build(tx, dag.build_id)
    await dag.finish("beside")
    await dag.finish("after-up")
    # The wait also waits for the uploaded step.
    assert (await dag.jobs())["last"] == "pending"
    await dag.finish("new-$X1")
    assert (await dag.jobs())["last"] == "scheduled"


async def test_upload_replace_and_errors(dag: Dag, store: Store) -> None:
    await dag.create(
        "steps:\n  - {label: up, command: x}\n  - wait\n  - {label: old, command: x}\n"
    )
    uploader = await dag.job("up")
    async with store.transaction() as tx:
        await tx.require_transition(uploader.id, ["scheduled"], "assigned")
        job = await tx.get_job(uploader.id)
        with pytest.raises(PipelineError, match=r"up\.yml:2"):
            await upload_pipeline(tx, job, "steps:\n  - trigger: ~\n", filename="up.yml", env={})
        build, _ = await upload_pipeline(
            tx, job, "- {label: new, command: x}\n", filename="up.yml", env={}, replace=True
        )
    assert [s.label for s in build.steps] == ["up", "new"]


async def test_cancel_build_with_a_blocked_step(dag: Dag, store: Store) -> None:
    await dag.create("steps:\n  - block: ok?\n  - {label: after, command: x}\n")
    assert await dag.state() == BuildState.BLOCKED
    async with store.transaction() as tx:
        build = await scheduler.cancel_build(tx, dag.build_id)
    assert build.state == BuildState.CANCELED


async def test_pipeline_env_is_interpolated_at_creation(dag: Dag) -> None:
    build = await dag.create(
        """
        env:
          TEAM: ops
          GREETING: "hi ${TEAM} on ${BUILDKITE_BRANCH}"
        steps:
          - {label: "say $GREETING", command: "echo ${GREETING}"}
        """,
        branch="dev",
    )
    assert build.jobs[0].label == "say hi ops on dev"
    assert build.jobs[0].command == "echo hi ops on dev"
    assert build.env["GREETING"] == "hi ops on dev"


async def test_a_job_past_its_timeout_is_canceled_and_marked(dag: Dag, store: Store) -> None:
    from datetime import timedelta

    from conveyor.server.context import ServerContext
    from conveyor.server.reaper import expire_timeouts

    await dag.create(
        "steps:\n  - {label: slow, command: x, timeout_in_minutes: 1}\n"
        "  - {label: quick, command: x}\n"
    )
    slow, quick = await dag.job("slow"), await dag.job("quick")
    async with store.transaction() as tx:
        for job, began in ((slow, 61), (quick, 3600)):
            await tx.require_transition(job.id, ["scheduled"], "assigned")
            await tx.require_transition(job.id, ["assigned"], "accepted")
            await tx.require_transition(
                job.id, ["accepted"], "running", started_at=utcnow() - timedelta(seconds=began)
            )
    assert await expire_timeouts(ServerContext(store=store)) == 1
    slow = await dag.job("slow")
    assert (slow.state, slow.timed_out) == ("canceling", True)
    assert (await dag.job("quick")).state == "running"  # no timeout of its own
    shown = {j.label: j for j in build_out(await dag.build()).jobs}
    assert (shown["slow"].timed_out, shown["quick"].timed_out) == (True, False)
    assert "(timed out)" in describe(shown["slow"])


async def test_manual_retry_resets_only_what_waits_for_the_retried_step(
    dag: Dag, store: Store
) -> None:
    await dag.create(
        """
        steps:
          - {label: a, key: a, command: x}
          - {label: b, command: x, depends_on: a}
          - {label: x, key: x, command: x}
          - {label: y, command: x, depends_on: x}
        """
    )
    await dag.finish("a", 1)
    await dag.finish("x", 1)
    failed = await dag.job("a")
    async with store.transaction() as tx:
        await retry_job(tx, failed.id)
    await dag.finish("a")
    assert (await dag.steps())["b"] == "running"
    # y waits for x, which was not retried: it stays not run, with its one skipped job.
    assert (await dag.steps())["y"] == "not_run"
    assert [j.state for j in (await dag.build()).jobs if j.label == "y"] == ["skipped"]
    await dag.finish("b")
    assert await dag.state() == BuildState.FAILED  # x still failed


async def test_a_block_step_inside_a_group_blocks_the_build(dag: Dag, store: Store) -> None:
    await dag.create(
        """
        steps:
          - group: release
            steps:
              - {label: build, command: x}
              - block: ship?
                key: ship
              - {label: deploy, command: x}
        """
    )
    await dag.finish("build")
    # The group row is `running`, but only an unblock can move the build on.
    assert (await dag.steps())["release"] == "running"
    assert await dag.state() == BuildState.BLOCKED
    async with store.transaction() as tx:
        await unblock_step(tx, dag.build_id, "ship", {})
    await dag.finish("deploy")
    assert await dag.state() == BuildState.PASSED


async def test_if_sees_the_build_failing_within_the_same_advance(dag: Dag) -> None:
    await dag.create(
        """
        steps:
          - {label: tests, command: x}
          - wait: ~
            continue_on_failure: true
          - {label: on-failure, command: x, if: build.state == "failing"}
          - {label: on-success, command: x, if: build.state != "failing"}
        """
    )
    await dag.finish("tests", 1)
    assert await dag.steps() == {
        "tests": "failed",
        "wait": "passed",
        "on-failure": "running",
        "on-success": "skipped",
    }
    await dag.finish("on-failure")
    assert await dag.state() == BuildState.FAILED


async def test_a_group_opens_for_steps_that_allow_its_dependency_to_fail(dag: Dag) -> None:
    await dag.create(
        """
        steps:
          - {label: tests, key: tests, command: x}
          - group: after
            depends_on: tests
            steps:
              - {label: cleanup, command: x, allow_dependency_failure: true}
              - {label: publish, command: x}
        """
    )
    await dag.finish("tests", 1)
    # The group is open while `cleanup` runs; `publish` does not run.
    assert await dag.steps() == {
        "tests": "failed",
        "after": "running",
        "cleanup": "running",
        "publish": "not_run",
    }
    await dag.finish("cleanup")
    assert (await dag.steps())["after"] == "passed"
    assert await dag.state() == BuildState.FAILED


async def test_a_group_whose_dependency_failed_settles_not_run(dag: Dag) -> None:
    await dag.create(
        """
        steps:
          - {label: tests, key: tests, command: x}
          - group: after
            depends_on: tests
            steps:
              - {label: publish, command: x}
        """
    )
    await dag.finish("tests", 1)
    assert await dag.steps() == {"tests": "failed", "after": "not_run", "publish": "not_run"}
    assert await dag.state() == BuildState.FAILED


@pytest.mark.parametrize(
    ("pipeline", "upload"),
    [
        pytest.param(
            "steps:\n  - {label: up, key: up, command: x}\n  - wait\n"
            "  - {label: deploy, key: deploy, command: x}\n",
            "- {label: new, command: x, depends_on: deploy}\n",
            id="depends-on-a-step-after-the-next-wait",
        ),
        pytest.param(
            "steps:\n  - group: g\n    key: g\n    steps:\n"
            "      - {label: up, key: up, command: x}\n",
            "- {label: new, command: x, depends_on: g}\n",
            id="depends-on-its-own-group",
        ),
    ],
)
async def test_an_upload_that_would_wait_for_itself_is_refused(
    dag: Dag, store: Store, pipeline: str, upload: str
) -> None:
    before = await dag.create(pipeline)
    uploader = await dag.job("up")
    with pytest.raises(PipelineError, match=r"up\.yml:1: depends_on forms a cycle.*in step 'new'"):
        async with store.transaction() as tx:
            await upload_pipeline(
                tx, await tx.get_job(uploader.id), upload, filename="up.yml", env={}
            )
    after = await dag.build()
    assert [s.id for s in after.steps] == [s.id for s in before.steps]
    assert [s.depends_on for s in after.steps] == [s.depends_on for s in before.steps]


async def test_retrying_a_triggered_builds_job_reopens_the_trigger_step(
    dag: Dag, store: Store
) -> None:
    async with store.transaction() as tx:
        await tx.upsert_pipeline("deploy", steps="steps:\n  - {label: ship, command: x}\n")
    parent = await dag.create(
        "steps:\n  - {trigger: deploy, label: go}\n  - wait\n  - {label: after, command: x}\n"
    )
    child_id = (await dag.build()).steps[0].config["triggered_build"]["id"]
    dag.build_id = child_id
    await dag.finish("ship", 1)
    dag.build_id = parent.id
    assert await dag.steps() == {"go": "failed", "wait": "not_run", "after": "not_run"}
    assert await dag.state() == BuildState.FAILED
    dag.build_id = child_id
    ship = await dag.job("ship")
    async with store.transaction() as tx:
        await retry_job(tx, ship.id)
    assert await dag.state() == BuildState.RUNNING
    dag.build_id = parent.id
    assert await dag.state() == BuildState.RUNNING
    assert (await dag.steps())["go"] == "running"
    dag.build_id = child_id
    await dag.finish("ship")
    dag.build_id = parent.id
    assert await dag.jobs() == {"after": "scheduled"}
    await dag.finish("after")
    assert await dag.state() == BuildState.PASSED


async def test_retrying_a_job_of_a_build_whose_trigger_was_canceled(dag: Dag, store: Store) -> None:
    """The triggered build runs again; the canceled build that triggered it stays canceled."""
    async with store.transaction() as tx:
        await tx.upsert_pipeline("deploy", steps="steps:\n  - {label: ship, command: x}\n")
    parent = await dag.create(
        "steps:\n  - {trigger: deploy, label: go}\n  - {label: other, command: x}\n"
    )
    child_id = (await dag.build()).steps[0].config["triggered_build"]["id"]
    dag.build_id = child_id
    await dag.finish("ship", 1)
    async with store.transaction() as tx:
        await scheduler.cancel_build(tx, parent.id)
    dag.build_id = parent.id
    assert await dag.state() == BuildState.CANCELED
    dag.build_id = child_id
    ship = await dag.job("ship")
    async with store.transaction() as tx:
        await retry_job(tx, ship.id)
    assert await dag.state() == BuildState.RUNNING
    dag.build_id = parent.id
    assert await dag.state() == BuildState.CANCELED
    assert (await dag.steps())["go"] == "failed"
