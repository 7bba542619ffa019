"""`advance_build` reads a build once and follows its own writes in memory: what it returns must
be the build as the database now has it, through every kind of step and outcome."""

from __future__ import annotations

import textwrap

import anyio
import pytest

from conveyor.server import scheduler
from conveyor.server.retries import retry_if_asked
from conveyor.server.unblock import unblock_step
from conveyor.storage import Store, Tx
from conveyor.storage.queries.base import utcnow
from conveyor.storage.rows import BuildRow

pytestmark = pytest.mark.anyio

PIPELINES = {
    "dag": """
        steps:
          - {label: a, key: a, command: a, parallelism: 2}
          - {label: b, key: b, command: b, soft_fail: [{exit_status: 3}]}
          - {label: skipped, command: x, skip: "not today"}
          - {label: never, command: x, if: build.branch == "other"}
          - wait
          - {label: c, command: c, depends_on: [{step: a, allow_failure: true}]}
          - group: tests
            steps:
              - {label: d, key: d, command: d}
              - {label: e, command: e, allow_dependency_failure: true, depends_on: d}
          - wait: ~
            continue_on_failure: true
          - {label: last, command: last}
    """,
    "failing": """
        steps:
          - {label: fails, command: x}
          - {label: canceled, command: x, cancel_on_build_failing: true}
          - wait
          - {label: not run, command: x}
    """,
    "retries": """
        steps:
          - label: flaky
            command: x
            retry: {automatic: [{exit_status: 2, limit: 1}]}
          - wait
          - {label: after, command: x}
    """,
    "blocked": """
        steps:
          - {label: build, command: x}
          - block: release
            key: release
          - {label: ship, command: x}
    """,
    "trigger": """
        steps:
          - {label: first, command: x}
          - wait
          - trigger: child
          - {label: last, command: x}
    """,
}
EXIT_STATUSES = {"a 2": 1, "b": 3, "d": 1, "fails": 1, "flaky": 2}


async def _check(tx: Tx, returned: BuildRow) -> None:
    assert returned == await tx.get_build(returned.id)


async def _run_next(store: Store, build_id: str, done: set[str]) -> bool:
    """Run one runnable job to its end (each attempt once) and check what advancing returns."""
    async with store.transaction() as tx:
        build = await tx.get_build(build_id)
        child_ids = await _children(tx, build)
    for bid in [build_id, *child_ids]:
        async with store.transaction() as tx:
            build = await tx.get_build(bid)
        for job in build.jobs:
            if job.state != "scheduled":
                continue
            status = 0 if job.id in done else EXIT_STATUSES.get(job.label, 0)
            if job.attempt > 1:
                status = 0
            done.add(job.id)
            async with store.transaction() as tx:
                for old, new in (("scheduled", "assigned"), ("assigned", "accepted")):
                    await tx.require_transition(job.id, [old], new)
                await tx.require_transition(job.id, ["accepted"], "running", started_at=utcnow())
                await tx.require_transition(
                    job.id, ["running"], "finished", exit_status=status, finished_at=utcnow()
                )
                await retry_if_asked(tx, await tx.get_job(job.id))
                await _check(tx, await scheduler.advance_build(tx, bid))
            return True
    return False


async def _children(tx: Tx, build: BuildRow) -> list[str]:
    children: list[str] = []
    for step in build.steps:
        if step.kind == "trigger":
            children += await tx.builds_of_step(step.id)
    return children


@pytest.mark.parametrize("name", sorted(PIPELINES))
async def test_advancing_returns_the_build_as_stored(store: Store, name: str) -> None:
    async with store.transaction() as tx:
        await tx.upsert_pipeline("child", steps="steps:\n  - {label: child job, command: x}\n")
    prepared = scheduler.prepare_build("p", textwrap.dedent(PIPELINES[name]))
    async with store.transaction() as tx:
        build = await scheduler.store_build(tx, prepared)
        await _check(tx, build)
    done: set[str] = set()
    for _ in range(50):
        if not await _run_next(store, build.id, done):
            async with store.transaction() as tx:
                build = await tx.get_build(build.id)
                if not any(s.state == "blocked" for s in build.steps):
                    break
                await _check(tx, await unblock_step(tx, build.id, "release", {}))
    async with store.transaction() as tx:
        final = await tx.get_build(build.id)
    assert final.state in ("passed", "failed"), [(s.label, s.state) for s in final.steps]
    assert all(j.state in ("finished", "skipped", "canceled") for j in final.jobs)


async def _finish(tx: Tx, job_id: str, status: int = 0) -> None:
    for old, new in (("scheduled", "assigned"), ("assigned", "accepted"), ("accepted", "running")):
        await tx.require_transition(job_id, [old], new)
    await tx.require_transition(
        job_id, ["running"], "finished", exit_status=status, finished_at=utcnow()
    )


async def test_a_job_ending_beside_live_jobs_of_its_step_leaves_the_build_unread(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        "steps:\n  - {label: a, command: a, parallelism: 3}\n  - wait\n  - {label: b, command: b}\n"
    )
    async with store.transaction() as tx:
        build = await scheduler.store_build(tx, scheduler.prepare_build("p", text))
    step_a = next(s for s in build.steps if s.label == "a")
    a_jobs = [j.id for j in build.jobs if j.step_id == step_a.id]
    assert len(a_jobs) == 3
    reads: list[str] = []
    original = Tx.get_build

    async def counted(self: Tx, build_id: str) -> BuildRow:
        reads.append(build_id)
        return await original(self, build_id)

    monkeypatch.setattr(Tx, "get_build", counted)
    for n, job_id in enumerate(a_jobs, start=1):
        async with store.transaction() as tx:
            await _finish(tx, job_id)
            await scheduler.job_ended(tx, await tx.get_job(job_id))
        last = n == len(a_jobs)
        assert bool(reads) == last, f"job {n} of 3: the build was read {len(reads)} times"
        async with store.transaction() as tx:
            now = await original(tx, build.id)
        states = {s.label: s.state for s in now.steps if s.label in ("a", "b")}
        assert states == (
            {"a": "passed", "b": "running"} if last else {"a": "running", "b": "pending"}
        )
        reads.clear()


async def test_a_failed_job_retried_keeps_its_step_running_and_the_last_ending_settles_it(
    store: Store,
) -> None:
    text = """
        steps:
          - {label: a, command: a, parallelism: 2, retry: {automatic: [{exit_status: 2, limit: 1}]}}
          - wait
          - {label: b, command: b}
    """
    async with store.transaction() as tx:
        build = await scheduler.store_build(tx, scheduler.prepare_build("p", textwrap.dedent(text)))
    first, second = (j.id for j in build.jobs if j.label.startswith("a"))
    async with store.transaction() as tx:
        await _finish(tx, first, status=2)
        retried = await retry_if_asked(tx, await tx.get_job(first))
        assert retried is not None
        await scheduler.job_ended(tx, await tx.get_job(first))
    for job_id in (second, retried):
        async with store.transaction() as tx:
            await _finish(tx, job_id)
            await scheduler.job_ended(tx, await tx.get_job(job_id))
    async with store.transaction() as tx:
        final = await tx.get_build(build.id)
    assert {s.label: s.state for s in final.steps if s.label} == {"a": "passed", "b": "running"}


async def test_the_last_two_jobs_of_a_step_ending_at_once_settle_it(store: Store) -> None:
    """Each ending job's transaction has finished its job before either looks at the step
    (PostgreSQL): whichever takes the build second sees the other's job ended, and advances."""
    if store.backend != "postgresql":
        pytest.skip("SQLite serialises writers: two transactions never overlap")
    text = (
        "steps:\n  - {label: a, command: a, parallelism: 2}\n  - wait\n  - {label: b, command: b}\n"
    )
    async with store.transaction() as tx:
        build = await scheduler.store_build(tx, scheduler.prepare_build("p", text))
    both_finished = anyio.Event()
    finished = 0

    async def end(job_id: str) -> None:
        nonlocal finished
        async with store.transaction() as tx:
            await _finish(tx, job_id)
            finished += 1
            if finished == 2:
                both_finished.set()
            await both_finished.wait()
            await scheduler.job_ended(tx, await tx.get_job(job_id))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for job in build.jobs:
                if job.label.startswith("a"):
                    tg.start_soon(end, job.id)
    async with store.transaction() as tx:
        final = await tx.get_build(build.id)
    assert {s.label: s.state for s in final.steps if s.label} == {"a": "passed", "b": "running"}


async def test_a_job_ending_unstarted_beside_live_jobs_still_starts_its_build(
    store: Store,
) -> None:
    """A job whose start call failed is finished from `accepted`: its build counts it as
    started, as advancing the build would say, though the build is not read."""
    text = "steps:\n  - {label: a, command: a, parallelism: 2}\n"
    async with store.transaction() as tx:
        build = await scheduler.store_build(tx, scheduler.prepare_build("p", text))
    job_id = build.jobs[0].id
    async with store.transaction() as tx:
        for old, new in (("scheduled", "assigned"), ("assigned", "accepted")):
            await tx.require_transition(job_id, [old], new)
    async with store.transaction() as tx:
        await tx.require_transition(
            job_id, ["accepted"], "finished", exit_status=-1, finished_at=utcnow()
        )
        await scheduler.job_ended(tx, await tx.get_job(job_id))
    async with store.transaction() as tx:
        now = await tx.get_build(build.id)
    assert now.state == "running" and now.started_at is not None
