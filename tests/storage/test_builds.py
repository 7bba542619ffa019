"""Builds: per-pipeline numbers, steps and jobs stored with their dependencies."""

from __future__ import annotations

import anyio
import pytest

from conveyor.errors import InvalidStateError, NotFoundError
from conveyor.storage import Store
from tests.storage.builders import command_step, insert_build, wait_step

pytestmark = pytest.mark.anyio


async def test_build_numbers_count_per_pipeline(store: Store) -> None:
    numbers: list[tuple[str, int]] = []
    for slug in ["alpha", "alpha", "beta", "alpha", "beta"]:
        async with store.transaction() as tx:
            build = await tx.get_build(await insert_build(tx, slug, [command_step("x")]))
        numbers.append((build.pipeline_slug, build.number))
    assert numbers == [("alpha", 1), ("alpha", 2), ("beta", 1), ("alpha", 3), ("beta", 2)]
    async with store.transaction() as tx:
        assert (await tx.get_build_by_number("alpha", 3)).number == 3
        assert [b.number for b in await tx.list_builds(pipeline_slug="beta")] == [2, 1]
        assert len(await tx.list_builds()) == 5
        assert len(await tx.list_builds(limit=2)) == 2
        with pytest.raises(NotFoundError, match="no build beta#3"):
            await tx.get_build_by_number("beta", 3)
        with pytest.raises(NotFoundError):
            await tx.get_build("no-such-id")

    # A transaction that fails stores nothing: not the build, not a new pipeline.
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await insert_build(tx, "gamma", [command_step("one")])
            await insert_build(tx, "alpha", [command_step("one")])
            raise Boom
    async with store.transaction() as tx:
        assert len(await tx.list_builds()) == 5
        gamma = await tx.get_build(await insert_build(tx, "gamma", [command_step("one")]))
        alpha = await tx.get_build(await insert_build(tx, "alpha", [command_step("one")]))
    assert (gamma.number, alpha.number) == (1, 4)


async def test_concurrent_builds_of_one_pipeline_get_distinct_numbers(store: Store) -> None:
    async with store.transaction() as tx:
        await insert_build(tx, "busy", [command_step("first")])
    ids: list[str] = []

    async def create() -> None:
        async with store.transaction() as tx:
            ids.append(await insert_build(tx, "busy", [command_step("x")]))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(create)
    async with store.transaction() as tx:
        numbers = sorted([(await tx.get_build(b)).number for b in ids])
    assert numbers == list(range(2, 10))


async def test_first_builds_of_a_new_pipeline_racing(store: Store) -> None:
    """Two transactions create the first builds of one new pipeline at the same time."""
    first_inserted = anyio.Event()
    second_started = anyio.Event()
    ids: list[str] = []

    async def first() -> None:
        async with store.transaction() as tx:
            ids.append(await insert_build(tx, "fresh", [command_step("a")]))
            first_inserted.set()
            await second_started.wait()
            # Let the second transaction reach its insert (it blocks on ours) before we commit.
            await anyio.sleep(0.3)

    async def second() -> None:
        await first_inserted.wait()
        second_started.set()
        async with store.transaction() as tx:
            ids.append(await insert_build(tx, "fresh", [command_step("b")]))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
    async with store.transaction() as tx:
        assert sorted([(await tx.get_build(b)).number for b in ids]) == [1, 2]


async def test_steps_and_jobs_are_stored_with_dependencies(store: Store) -> None:
    steps = [
        command_step("lint", key="lint"),
        command_step("unit", key="unit", jobs=3, agent_query={"queue": "fast"}),
        wait_step(depends_on=[0, 1], continue_on_failure=True),
        command_step("deploy", key="deploy", depends_on=[2]),
        command_step("notify", depends_on=[0, 3]),
    ]
    async with store.transaction() as tx:
        build_id = await insert_build(tx, "p", steps, branch="feature/x", commit="deadbeef")
    async with store.transaction() as tx:
        build = await tx.get_build(build_id)

    assert (build.state, build.branch, build.commit, build.source) == (
        "scheduled",
        "feature/x",
        "deadbeef",
        "api",
    )
    assert build.env == {"BUILD_ENV": "1"}
    assert [(s.position, s.kind, s.key, s.state) for s in build.steps] == [
        (0, "command", "lint", "pending"),
        (1, "command", "unit", "pending"),
        (2, "wait", None, "pending"),
        (3, "command", "deploy", "pending"),
        (4, "command", None, "pending"),
    ]
    ids = [s.id for s in build.steps]
    # Positions in NewStep.depends_on became the ids of those steps.
    assert [s.depends_on for s in build.steps] == [
        [],
        [],
        [ids[0], ids[1]],
        [ids[2]],
        [ids[0], ids[3]],
    ]
    assert [s.allow_dependency_failure for s in build.steps] == [False, False, True, False, False]
    assert build.steps[2].config == {"continue_on_failure": True, "allow_failure": []}

    # Jobs: one per command step (three for "unit"), none for the wait, in step order.
    assert [ids.index(j.step_id) for j in build.jobs] == [0, 1, 1, 1, 3, 4]
    assert sorted((j.label, ids.index(j.step_id)) for j in build.jobs) == [
        ("deploy", 3),
        ("lint", 0),
        ("notify", 4),
        ("unit 1", 1),
        ("unit 2", 1),
        ("unit 3", 1),
    ]
    for job in build.jobs:
        assert (job.state, job.attempt, job.log_size, job.agent_id) == ("pending", 1, 0, None)
        assert job.env == {"STEP": job.label.split()[0]}
    assert build.jobs[1].agent_query == {"queue": "fast"}
    assert build.jobs[0].agent_query == {}
    assert build.jobs[0].created_at.tzinfo is not None

    async with store.transaction() as tx:
        await tx.set_step_state(build.steps[0].id, "running")
        await tx.set_build_state(build_id, "running", started_at=build.created_at)
    async with store.transaction() as tx:
        build = await tx.get_build(build_id)
    assert (build.state, build.steps[0].state, build.started_at) == (
        "running",
        "running",
        build.created_at,
    )


async def test_build_states_change_only_as_build_transitions_allow(store: Store) -> None:
    async with store.transaction() as tx:
        build_id = await insert_build(tx, "p", [command_step("one")])
        await tx.set_build_state(build_id, "running")
        await tx.set_build_state(build_id, "running")  # staying put is not a change
        await tx.set_build_state(build_id, "canceling")
        await tx.set_build_state(build_id, "canceled")
    with pytest.raises(InvalidStateError, match="cannot go from canceled to running"):
        async with store.transaction() as tx:
            await tx.set_build_state(build_id, "running")
    async with store.transaction() as tx:
        assert (await tx.get_build(build_id)).state == "canceled"
