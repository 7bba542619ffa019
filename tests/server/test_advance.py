"""`advance_build` reads a build once and follows its own writes in memory: what it returns must
be the build as the database now has it, through every kind of step and outcome."""

from __future__ import annotations

import textwrap

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
