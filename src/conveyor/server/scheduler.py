"""The scheduler moves a build along its DAG (see `planner` for how steps get their order).

Step states:

    pending ─┬─> running ──> passed | failed       command, trigger and group steps
             ├─> blocked ──> passed                block and input steps, until unblocked
             ├─> passed                            wait steps
             ├─> skipped                           `skip`, branch filter or `if` said no
             └─> not_run                           a dependency failed (or the build was
                                                   canceled); a manual retry that passes
                                                   puts not_run steps back to pending

A step is looked at once every dependency is settled (passed, failed, skipped, not_run).
A failed or not_run dependency stops it, unless the step allows dependency failure or the
dependency is listed with `allow_failure`. A skipped dependency does not.

A command step settles when the latest attempt of each of its jobs has finished: failed if one
of them failed and its exit status is not covered by `soft_fail`. Build states: scheduled →
running (a job started) → failing (a step failed, others still run) → passed | failed;
`blocked` while only unblocking can make progress; canceling → canceled.
"""

from __future__ import annotations

import dataclasses
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from conveyor.errors import ConveyorError, NotFoundError
from conveyor.pipeline import check_graph, parse_pipeline
from conveyor.protocol import BuildState, JobState
from conveyor.server.buildstate import SETTLED, derive_state, latest_attempts, lineage
from conveyor.server.conditions import skip_reason
from conveyor.server.planner import plan_steps
from conveyor.storage import Tx
from conveyor.storage.queries.base import utcnow
from conveyor.storage.rows import BuildRow, JobRow, NewStep, StepRow

_MAX_TRIGGER_DEPTH = 10
_advancing: ContextVar[frozenset[str]] = ContextVar("_advancing", default=frozenset())
"""Builds being advanced further up the call stack (a trigger step's build)."""

# ---- creating builds ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PreparedBuild:
    """A build checked and planned, ready to store (see `prepare_build`)."""

    slug: str
    text: str
    branch: str
    commit: str
    message: str
    env: dict[str, str]
    steps: list[NewStep]
    warnings: list[str]


def prepare_build(
    slug: str,
    text: str,
    *,
    filename: str = "pipeline.yml",
    branch: str = "main",
    commit: str = "HEAD",
    message: str = "",
    env: dict[str, str] | None = None,
) -> PreparedBuild:
    """Parse (interpolating against the build's env), check and plan a build. CPU work only,
    so callers may run it in a worker thread. Raises PipelineError."""
    env = dict(env or {})
    runtime = {
        **env,
        "BUILDKITE_BRANCH": branch,
        "BUILDKITE_COMMIT": commit,
        "BUILDKITE_MESSAGE": message,
        "BUILDKITE_PIPELINE_SLUG": slug,
        "CONVEYOR_BRANCH": branch,
        "CONVEYOR_COMMIT": commit,
        "CONVEYOR_MESSAGE": message,
        "CONVEYOR_PIPELINE_SLUG": slug,
    }
    pipeline = parse_pipeline(text, filename=filename, env=runtime)
    check_graph(pipeline, filename=filename)
    return PreparedBuild(
        slug=slug,
        text=text,
        branch=branch,
        commit=commit,
        message=message,
        # The pipeline's own env wins, as it does in interpolation and in every job's env.
        env={**env, **pipeline.env},
        steps=plan_steps(pipeline, filename=filename),
        warnings=list(pipeline.warnings),
    )


async def store_build(
    tx: Tx,
    prepared: PreparedBuild,
    *,
    source: str = "api",
    meta_data: dict[str, str] | None = None,
    parent_step_id: str | None = None,
) -> BuildRow:
    """Store a prepared build and start it."""
    build_id = await tx.insert_build(
        pipeline_slug=prepared.slug,
        pipeline_text=prepared.text,
        steps=prepared.steps,
        branch=prepared.branch,
        commit=prepared.commit,
        message=prepared.message,
        env=prepared.env,
        source=source,
        meta_data=meta_data,
        parent_step_id=parent_step_id,
    )
    return await advance_build(tx, build_id)


def parent_group(build: BuildRow, step: StepRow) -> StepRow | None:
    """The group `step` is in, or None."""
    return next(
        (s for s in build.steps if s.kind == "group" and step.id in s.config["children"]), None
    )


# ---- moving builds along -----------------------------------------------------------------


@dataclass
class _Edits:
    """What one pass of `_advance_once` wrote, applied to the rows it read instead of reading
    the whole build again (build, steps, jobs: three queries, each of every row of the build).
    Changes whose effect is not simple to follow (a cancel, a failed step's config, a trigger)
    make the next pass read the build anew."""

    steps: dict[str, str] = field(default_factory=dict)  # step id → new state
    scheduled: dict[str, datetime] = field(default_factory=dict)  # step id → runnable_at
    skipped: dict[str, datetime] = field(default_factory=dict)  # step id → finished_at
    soft_failed: set[str] = field(default_factory=set)  # job ids
    reread: bool = False

    async def set_step_state(self, tx: Tx, step_id: str, state: str) -> None:
        await tx.set_step_state(step_id, state)
        self.steps[step_id] = state

    def apply(self, build: BuildRow) -> BuildRow:
        steps = [
            dataclasses.replace(s, state=self.steps[s.id]) if s.id in self.steps else s
            for s in build.steps
        ]
        jobs = []
        for job in build.jobs:
            if job.step_id in self.scheduled and job.state == JobState.PENDING:
                job = dataclasses.replace(
                    job, state=JobState.SCHEDULED.value, runnable_at=self.scheduled[job.step_id]
                )
            if job.step_id in self.skipped and job.state in (JobState.PENDING, JobState.SCHEDULED):
                job = dataclasses.replace(
                    job, state=JobState.SKIPPED.value, finished_at=self.skipped[job.step_id]
                )
            if job.id in self.soft_failed:
                job = dataclasses.replace(job, soft_failed=True)
            jobs.append(job)
        return dataclasses.replace(build, steps=steps, jobs=jobs)


async def job_ended(tx: Tx, job: JobRow) -> None:
    """A job ended (finished or canceled, a retry of it made or not): advance its build.

    Unless its step still has a job that has not ended: then the step cannot settle, so nothing
    that depends on it can change either, and the build is not read. A finish in a step of
    many parallel jobs costs one small query instead of a read of the whole build. The build
    is locked first, so that of two jobs of the step ending at once (PostgreSQL), the second
    sees the first as ended and advances."""
    await tx.lock_build(job.build_id)
    if await tx.step_has_live_jobs(job.step_id):
        if job.started_at is None:
            # It ended without starting (its start call failed): a build counts an ended job
            # as started (`derive_state`), which advancing would have stored.
            await tx.mark_build_started(job.build_id, utcnow())
        return
    await _advance_locked(tx, job.build_id)


async def advance_build(tx: Tx, build_id: str) -> BuildRow:
    """Settle what can be settled and start what became runnable, until nothing changes.

    Returns the build as it now is. The build is read once; what each pass wrote is applied to
    those rows (see `_Edits`)."""
    await tx.lock_build(build_id)
    return await _advance_locked(tx, build_id)


async def _advance_locked(tx: Tx, build_id: str) -> BuildRow:
    """`advance_build` once the build is locked."""
    token = _advancing.set(_advancing.get() | {build_id})
    try:
        build = await tx.get_build(build_id)
        while True:
            edits = _Edits()
            if not await _advance_once(tx, build, edits):
                break
            build = await tx.get_build(build_id) if edits.reread else edits.apply(build)
        finished, build = await _update_build_state(tx, build)
    finally:
        _advancing.reset(token)
    if finished and build.parent_step_id is not None:
        # A triggered build ended: the trigger step that waits for it settles now (unless
        # that build is being advanced up the stack, which will see it).
        parent = await tx.get_step(build.parent_step_id)
        if parent.build_id not in _advancing.get():
            await advance_build(tx, parent.build_id)
    return build


async def _advance_once(tx: Tx, build: BuildRow, edits: _Edits) -> bool:
    steps = {s.id: s for s in build.steps}
    # Each running step looks at its own jobs: grouped once, not searched for per step (a
    # build of N parallel steps would cost N x N per pass).
    jobs_of: dict[str, list[JobRow]] = {}
    for job in build.jobs:
        jobs_of.setdefault(job.step_id, []).append(job)
    canceling = build.state == BuildState.CANCELING
    changed = False
    for step in build.steps:
        if step.state == "running":
            outcome = await _running_outcome(tx, step, jobs_of.get(step.id, []), steps, edits)
            if outcome is not None:
                await edits.set_step_state(tx, step.id, outcome)
                if outcome == "failed":
                    await _cancel_on_failing(tx, build, edits)
                changed = True
            continue
        if step.state != "pending":
            continue
        deps = [steps[d] for d in step.depends_on if d in steps]
        if any(d.state not in SETTLED for d in deps):
            continue
        allowed = set(step.config.get("allow_failure", []))
        failed = any(d.state in ("failed", "not_run") and d.id not in allowed for d in deps)
        # A group always opens (unless canceling): its steps may allow the failure.
        if canceling or (failed and not step.allow_dependency_failure and step.kind != "group"):
            await _settle_without_running(tx, step, "not_run", edits)
        else:
            await _start(tx, build, step, edits)
            if step.kind == "trigger":
                edits.reread = True
                return True  # a build was created: look again at fresh rows
        changed = True
    return changed


async def _settle_without_running(tx: Tx, step: StepRow, state: str, edits: _Edits) -> None:
    await edits.set_step_state(tx, step.id, state)
    edits.skipped[step.id] = await tx.skip_step_jobs(step.id)


async def _start(tx: Tx, build: BuildRow, step: StepRow, edits: _Edits) -> None:
    """The step's dependencies are settled: skip it, or run it as its kind says."""
    reason = await skip_reason(tx, build, step)
    if reason is not None:
        if reason.startswith("error: "):
            await _fail(tx, step, reason.removeprefix("error: "), edits)
        else:
            await _settle_without_running(tx, step, "skipped", edits)
        return
    if step.kind == "wait":
        await edits.set_step_state(tx, step.id, "passed")
    elif step.kind in ("block", "input"):
        await edits.set_step_state(tx, step.id, "blocked")
    elif step.kind == "group":
        await edits.set_step_state(tx, step.id, "running")
    elif step.kind == "trigger":
        await _trigger(tx, build, step, edits)
    else:
        await edits.set_step_state(tx, step.id, "running")
        edits.scheduled[step.id] = await tx.schedule_step_jobs(step.id)


async def _fail(tx: Tx, step: StepRow, error: str, edits: _Edits) -> None:
    """A step that cannot run (bad `if` at run time, unknown trigger target...) fails."""
    await tx.update_step(step.id, config={**step.config, "error": error})
    await _settle_without_running(tx, step, "failed", edits)
    await _cancel_on_failing(tx, await tx.get_build(step.build_id), edits)
    edits.reread = True


async def _running_outcome(
    tx: Tx, step: StepRow, jobs: list[JobRow], steps: dict[str, StepRow], edits: _Edits
) -> str | None:
    """The settled state of a running step (`jobs`: all of its jobs), or None while it is
    still going."""
    if step.kind == "group":
        children = [steps[c] for c in step.config.get("children", []) if c in steps]
        if any(c.state not in SETTLED for c in children):
            return None
        states = {c.state for c in children}
        if "failed" in states:
            return "failed"
        if "passed" in states or not children:
            return "passed"
        return "skipped" if states == {"skipped"} else "not_run"
    if step.kind == "trigger":
        return await _trigger_outcome(tx, step)
    latest = latest_attempts(jobs)
    if any(not JobState(j.state).terminal for j in latest):
        return None
    failed = False
    for job in latest:
        if job.passed or job.state == JobState.SKIPPED:
            continue
        if _soft_fails(job):
            if not job.soft_failed:
                await tx.set_soft_failed(job.id)
                edits.soft_failed.add(job.id)
            continue
        failed = True
    return "failed" if failed else "passed"


def _soft_fails(job: JobRow) -> bool:
    if job.state != JobState.FINISHED or job.soft_fail is None or job.soft_fail is False:
        return False
    if job.soft_fail is True:
        return True
    return job.exit_status in job.soft_fail


async def _cancel_on_failing(tx: Tx, build: BuildRow, edits: _Edits) -> None:
    """A step failed: steps with `cancel_on_build_failing` stop their jobs."""
    for step in build.steps:
        if step.state == "running" and step.config.get("cancel_on_build_failing"):
            await tx.cancel_step_jobs(step.id)
            edits.reread = True


async def _update_build_state(tx: Tx, build: BuildRow) -> tuple[bool, BuildRow]:
    """Store the build's state as its steps say. (True when the build just finished, the
    build as it now is.)"""
    if BuildState(build.state).terminal:
        return False, build
    state = derive_state(build)
    if state == build.state:
        return False, build
    now = utcnow()
    if state.terminal:
        started = build.started_at or now
        await tx.set_build_state(build.id, state, finished_at=now, started_at=started)
        return True, dataclasses.replace(
            build, state=state.value, finished_at=now, started_at=started
        )
    values: dict[str, Any] = {}
    if build.started_at is None and state != BuildState.SCHEDULED:
        values["started_at"] = now
    await tx.set_build_state(build.id, state, **values)
    return False, dataclasses.replace(build, state=state.value, **values)


# ---- trigger steps -------------------------------------------------------------------------


async def _trigger(tx: Tx, build: BuildRow, step: StepRow, edits: _Edits) -> None:
    """Create the build a trigger step asks for; a failure to do so fails the step."""
    config = step.config
    slug = config["trigger"]
    depth = await _trigger_depth(tx, build)
    if depth >= _MAX_TRIGGER_DEPTH:
        await _fail(tx, step, f"triggers are nested more than {_MAX_TRIGGER_DEPTH} deep", edits)
        return
    try:
        target = await tx.get_pipeline(slug)
    except NotFoundError:
        await _fail(tx, step, f"there is no pipeline {slug!r} to trigger", edits)
        return
    if not target.steps:
        await _fail(
            tx,
            step,
            f"pipeline {slug!r} has no stored steps to build "
            f"(set them with `conveyor pipeline set {slug} --steps FILE`)",
            edits,
        )
        return
    spec = config.get("build", {})
    # Running before the build exists: advancing the new build may come back here.
    await tx.set_step_state(step.id, "running")
    try:
        prepared = prepare_build(
            slug,
            target.steps,
            filename=f"{slug} (triggered)",
            branch=spec.get("branch") or target.default_branch,
            commit=spec.get("commit") or "HEAD",
            message=spec.get("message") or build.message,
            env=dict(spec.get("env") or {}),
        )
        child = await store_build(
            tx,
            prepared,
            source="trigger",
            meta_data=dict(spec.get("meta_data") or {}),
            parent_step_id=step.id,
        )
    except ConveyorError as exc:
        await _fail(tx, step, f"could not create the triggered build: {exc}", edits)
        return
    await tx.update_step(
        step.id, config={**config, "triggered_build": {"id": child.id, "number": child.number}}
    )
    if config.get("async"):
        await tx.set_step_state(step.id, "passed")


async def _trigger_depth(tx: Tx, build: BuildRow) -> int:
    depth = 0
    while build.parent_step_id is not None and depth < _MAX_TRIGGER_DEPTH:
        parent = await tx.get_step(build.parent_step_id)
        build = await tx.get_build(parent.build_id)
        depth += 1
    return depth


async def _trigger_outcome(tx: Tx, step: StepRow) -> str | None:
    children = await tx.builds_of_step(step.id)
    if not children:
        return "failed"
    child = await tx.get_build(children[-1])
    if not BuildState(child.state).terminal:
        return None
    if child.state == BuildState.PASSED or step.config.get("soft_fail"):
        return "passed"
    return "failed"


# ---- canceling -----------------------------------------------------------------------------


async def cancel_build(tx: Tx, build_id: str) -> BuildRow:
    """Cancel a build: jobs not yet running are canceled, running ones go to `canceling` (their
    agents stop them and finish them as canceled); nothing new is scheduled."""
    await tx.lock_build(build_id)
    build = await tx.get_build(build_id)
    if BuildState(build.state).terminal:
        return build
    await tx.cancel_build_jobs(build_id)
    await tx.set_build_state(build_id, BuildState.CANCELING)
    for step in build.steps:
        if step.state == "blocked":
            await tx.set_step_state(step.id, "not_run")
        if step.kind == "trigger" and step.state == "running":
            for child in await tx.builds_of_step(step.id):
                await cancel_build(tx, child)
    return await advance_build(tx, build_id)


__all__ = [
    "PreparedBuild",
    "advance_build",
    "cancel_build",
    "derive_state",
    "latest_attempts",
    "lineage",
    "parent_group",
    "prepare_build",
    "store_build",
]
