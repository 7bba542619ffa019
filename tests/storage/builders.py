"""Small builders of rows for the storage tests: builds, steps, agents, scheduled jobs."""

from __future__ import annotations

from conveyor.storage import Store, Tx
from conveyor.storage.rows import NewJob, NewStep


def command_step(
    label: str,
    *,
    key: str | None = None,
    depends_on: list[int] | None = None,
    jobs: int = 1,
    agent_query: dict[str, str] | None = None,
) -> NewStep:
    """A command step with `jobs` jobs, depending on the steps at the given positions."""
    return NewStep(
        kind="command",
        key=key,
        label=label,
        config={"command": f"echo {label}"},
        depends_on=depends_on or [],
        jobs=[
            NewJob(
                label=label if jobs == 1 else f"{label} {i + 1}",
                command=f"echo {label}",
                env={"STEP": label},
                agent_query=agent_query or {},
            )
            for i in range(jobs)
        ],
    )


def wait_step(*, depends_on: list[int], continue_on_failure: bool = False) -> NewStep:
    return NewStep(
        kind="wait",
        key=None,
        label=None,
        config={"continue_on_failure": continue_on_failure},
        depends_on=depends_on,
        allow_dependency_failure=continue_on_failure,
    )


async def insert_build(tx: Tx, slug: str, steps: list[NewStep], **fields: str) -> str:
    values = {"branch": "main", "commit": "abc123", "message": "test build", "source": "api"}
    values.update(fields)
    return await tx.insert_build(
        pipeline_slug=slug,
        pipeline_text="steps: []\n",
        steps=steps,
        env={"BUILD_ENV": "1"},
        branch=values["branch"],
        commit=values["commit"],
        message=values["message"],
        source=values["source"],
    )


async def insert_agent(tx: Tx, name: str, tags: dict[str, str] | None = None) -> str:
    return await tx.insert_agent(
        name=name,
        hostname="host",
        os="linux",
        arch="amd64",
        version="0.1.0",
        pid=1,
        tags=tags or {},
        priority=0,
    )


async def scheduled_jobs(store: Store, count: int, slug: str = "claims") -> list[str]:
    """A build of `count` independent one-job steps, every job scheduled. Returns the job ids."""
    async with store.transaction() as tx:
        build_id = await insert_build(tx, slug, [command_step(f"s{i}") for i in range(count)])
        build = await tx.get_build(build_id)
        for step in build.steps:
            await tx.schedule_step_jobs(step.id)
    return [j.id for j in build.jobs]
