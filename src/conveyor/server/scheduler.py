"""The scheduler turns a pipeline into steps and jobs, and moves a build along its DAG.

Every step depends on a set of earlier steps. A `wait` step depends on everything since the
previous wait; every step after a wait depends on that wait. A step becomes runnable when its
dependencies are done: its jobs go to `scheduled` (the dispatcher hands them out). When a
dependency failed — or was skipped because of a failure — the step is skipped instead, unless
it allows dependency failure (`continue_on_failure` on a wait).

Step states: pending → running → passed | failed, or pending → skipped (wait steps go straight
from pending to passed). The build is failed as soon as all its steps are settled and any
failed; passed when all passed or were skipped without a failure.
"""

from __future__ import annotations

import dataclasses

from conveyor.errors import PipelineError
from conveyor.pipeline import CommandStep, Pipeline, RetryRule, WaitStep, display_label
from conveyor.protocol import BuildState, JobState
from conveyor.storage import Tx
from conveyor.storage.queries.base import utcnow
from conveyor.storage.rows import BuildRow, JobRow, NewJob, NewStep, StepRow

SETTLED_STEP_STATES = frozenset({"passed", "failed", "skipped"})
_STARTED_JOB_STATES = frozenset(
    {JobState.ASSIGNED, JobState.ACCEPTED, JobState.RUNNING, JobState.CANCELING, JobState.FINISHED}
)


def plan_steps(pipeline: Pipeline, *, filename: str = "<pipeline>") -> list[NewStep]:
    """Steps with their dependencies resolved to positions; raises PipelineError."""
    keys: dict[str, int] = {}
    for position, step in enumerate(pipeline.steps):
        if step.key is not None:
            keys[step.key] = position

    planned: list[NewStep] = []
    last_wait: int | None = None
    since_wait: list[int] = []
    for position, step in enumerate(pipeline.steps):
        explicit: list[int] = []
        for key in step.depends_on:
            if key not in keys:
                raise PipelineError(
                    f"depends_on names {key!r}, but no step has that key",
                    file=filename,
                    line=step.line,
                    step=step.label or step.key or f"step {position + 1}",
                )
            explicit.append(keys[key])
        implicit = [] if last_wait is None else [last_wait]
        if isinstance(step, WaitStep):
            deps = sorted({*implicit, *since_wait, *explicit})
            planned.append(
                NewStep(
                    kind="wait",
                    key=step.key,
                    label=step.label,
                    config={"continue_on_failure": step.continue_on_failure},
                    depends_on=deps,
                    allow_dependency_failure=step.continue_on_failure,
                )
            )
            last_wait, since_wait = position, []
            continue
        assert isinstance(step, CommandStep)
        label = display_label(step, position)
        agents = {**pipeline.agents, **step.agents}
        planned.append(
            NewStep(
                kind="command",
                key=step.key,
                label=label,
                config={
                    "command": step.command,
                    "env": step.env,
                    "agents": agents,
                    "retry": [dataclasses.asdict(rule) for rule in step.retry],
                },
                depends_on=sorted({*implicit, *explicit}),
                jobs=[
                    NewJob(
                        label=label,
                        command=step.command,
                        env={**pipeline.env, **step.env},
                        agent_query=agents,
                    )
                ],
            )
        )
        since_wait.append(position)
    _check_acyclic(planned, pipeline, filename)
    return planned


def _check_acyclic(planned: list[NewStep], pipeline: Pipeline, filename: str) -> None:
    visiting: set[int] = set()
    done: set[int] = set()

    def visit(position: int) -> None:
        if position in done:
            return
        if position in visiting:
            step = pipeline.steps[position]
            raise PipelineError(
                "depends_on forms a cycle",
                file=filename,
                line=step.line,
                step=step.label or step.key or f"step {position + 1}",
            )
        visiting.add(position)
        for dep in planned[position].depends_on:
            visit(dep)
        visiting.discard(position)
        done.add(position)

    for position in range(len(planned)):
        visit(position)


def _step_outcome(step: StepRow, build: BuildRow) -> str | None:
    """The settled state of a running step, or None while its job is unfinished.

    Only the latest attempt counts: a job retried after a failure decides by its retry.
    """
    jobs = [j for j in build.jobs if j.step_id == step.id]
    if not jobs:
        return "passed"
    latest = max(jobs, key=lambda j: j.attempt)
    if not JobState(latest.state).terminal:
        return None
    return "passed" if latest.passed else "failed"


async def retry_if_asked(tx: Tx, job: JobRow) -> str | None:
    """After `job` finished: a new attempt if the step's automatic retry rules say so.

    The first rule that matches the exit status and signal reason decides; it allows `limit`
    retries (attempts after the first). Returns the new job's id, or None.
    """
    if job.state != JobState.FINISHED or job.passed:
        return None
    build = await tx.get_build(job.build_id)
    if build.state in (BuildState.CANCELING, BuildState.CANCELED):
        return None
    step = next(s for s in build.steps if s.id == job.step_id)
    for raw in step.config.get("retry", []):
        rule = RetryRule(
            exit_status=tuple(raw["exit_status"]) if raw["exit_status"] is not None else None,
            signal_reason=raw["signal_reason"],
            limit=raw["limit"],
        )
        if rule.matches(job.exit_status, job.signal_reason):
            if job.attempt > rule.limit:
                return None
            return await tx.insert_attempt(job)
    return None


async def cancel_build(tx: Tx, build_id: str) -> BuildRow:
    """Cancel a build: jobs not yet running are canceled, running ones go to `canceling` (their
    agents stop them and finish them as canceled); nothing new is scheduled."""
    await tx.lock_build(build_id)
    build = await tx.get_build(build_id)
    if BuildState(build.state).terminal:
        return build
    await tx.cancel_build_jobs(build_id)
    await tx.set_build_state(build_id, BuildState.CANCELING)
    return await advance_build(tx, build_id)


async def advance_build(tx: Tx, build_id: str) -> BuildRow:
    """Settle what can be settled and schedule what became runnable, until nothing changes."""
    await tx.lock_build(build_id)
    while True:
        build = await tx.get_build(build_id)
        if not await _advance_once(tx, build):
            break
    await _update_build_state(tx, build)
    return await tx.get_build(build_id)


async def _advance_once(tx: Tx, build: BuildRow) -> bool:
    steps = {s.id: s for s in build.steps}
    canceling = build.state == BuildState.CANCELING
    changed = False
    for step in build.steps:
        if step.state == "running":
            outcome = _step_outcome(step, build)
            if outcome is not None:
                await tx.set_step_state(step.id, outcome)
                changed = True
            continue
        if step.state != "pending":
            continue
        deps = [steps[d] for d in step.depends_on]
        if any(d.state not in SETTLED_STEP_STATES for d in deps):
            continue
        failed = any(d.state in ("failed", "skipped") for d in deps)
        if canceling or (failed and not step.allow_dependency_failure):
            await tx.set_step_state(step.id, "skipped")
            await tx.skip_step_jobs(step.id)
        elif step.kind == "wait":
            await tx.set_step_state(step.id, "passed")
        else:
            await tx.set_step_state(step.id, "running")
            await tx.schedule_step_jobs(step.id)
        changed = True
    return changed


async def _update_build_state(tx: Tx, build: BuildRow) -> None:
    if BuildState(build.state).terminal:
        return
    if all(s.state in SETTLED_STEP_STATES for s in build.steps):
        failed = any(s.state == "failed" for s in build.steps)
        if build.state == BuildState.CANCELING:
            state = BuildState.CANCELED
        else:
            state = BuildState.FAILED if failed else BuildState.PASSED
        now = utcnow()
        await tx.set_build_state(
            build.id, state, finished_at=now, started_at=build.started_at or now
        )
    elif build.state == BuildState.SCHEDULED and any(
        j.state in _STARTED_JOB_STATES for j in build.jobs
    ):
        await tx.set_build_state(build.id, BuildState.RUNNING, started_at=utcnow())
