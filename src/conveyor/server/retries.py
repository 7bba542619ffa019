"""New attempts of a job: automatic (the step's `retry.automatic` rules) and manual."""

from __future__ import annotations

from conveyor.errors import InvalidStateError
from conveyor.pipeline import RetryRule
from conveyor.protocol import BuildState, JobState
from conveyor.server.buildstate import SETTLED, latest_attempts, lineage
from conveyor.server.scheduler import advance_build
from conveyor.storage import Tx
from conveyor.storage.rows import BuildRow, JobRow, StepRow


async def retry_job(tx: Tx, job_id: str) -> JobRow:
    """A manual retry: a new attempt of a finished job. Steps that did not run because of the
    failure go back to pending, so the build carries on if the retry passes."""
    job = await tx.get_job(job_id)
    await tx.lock_build(job.build_id)
    build = await tx.get_build(job.build_id)
    step = next(s for s in build.steps if s.id == job.step_id)
    manual = step.config.get("manual_retry", {})
    if build.state in (BuildState.CANCELING, BuildState.CANCELED):
        raise InvalidStateError(f"build #{build.number} was canceled: its jobs cannot be retried")
    if not JobState(job.state).terminal or job.state == JobState.SKIPPED:
        raise InvalidStateError(f"job {job_id} is {job.state}: only finished jobs can be retried")
    if not manual.get("allowed", True):
        reason = manual.get("reason") or "its step does not allow manual retries"
        raise InvalidStateError(f"job {job_id} cannot be retried: {reason}")
    if job.passed and not manual.get("permit_on_passed", False):
        raise InvalidStateError(
            f"job {job_id} passed; its step does not permit retrying passed jobs"
        )
    newer = [j for j in build.jobs if lineage(j) == lineage(job) and j.attempt > job.attempt]
    if newer:
        raise InvalidStateError(f"job {job_id} was already retried (attempt {newer[-1].attempt})")
    new_id = await tx.insert_attempt(job)
    await _reopen(tx, build, step)
    return await tx.get_job(new_id)


async def _reopen(tx: Tx, build: BuildRow, step: StepRow) -> None:
    """`step` runs again: what did not run because of it goes back to pending, a finished
    build runs again, and so does the trigger step that waited for this build."""
    await tx.set_step_state(step.id, "running")
    downstream = _downstream(build, step)
    for other in build.steps:
        if other.id in downstream and (other.state == "not_run" or other.kind == "group"):
            await tx.set_step_state(other.id, "pending")
            for old in latest_attempts(j for j in build.jobs if j.step_id == other.id):
                if old.state == JobState.SKIPPED:
                    await tx.insert_attempt(old, state="pending")
    if BuildState(build.state).terminal:
        await tx.set_build_state(build.id, BuildState.RUNNING, finished_at=None)
    if build.parent_step_id is not None:
        trigger = await tx.get_step(build.parent_step_id)
        if trigger.state in SETTLED and not trigger.config.get("async"):
            await tx.lock_build(trigger.build_id)
            parent = await tx.get_build(trigger.build_id)
            # A canceled triggering build stays canceled: only this build runs again.
            if parent.state not in (BuildState.CANCELING, BuildState.CANCELED):
                await _reopen(tx, parent, trigger)
    await advance_build(tx, build.id)


def _downstream(build: BuildRow, step: StepRow) -> set[str]:
    """Ids of the steps that wait, directly or not, for `step` (its group included)."""
    found: set[str] = set()
    todo = [step.id]
    while todo:
        current = todo.pop()
        for other in build.steps:
            waits = current in other.depends_on or current in other.config.get("children", [])
            if waits and other.id not in found:
                found.add(other.id)
                todo.append(other.id)
    return found


async def retry_if_asked(tx: Tx, job: JobRow) -> str | None:
    """After `job` finished: a new attempt if the step's automatic retry rules say so.

    The first rule that matches the exit status, signal and signal reason decides; it allows
    `limit` retries (attempts after the first). Returns the new job's id, or None.
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
            signal=raw.get("signal"),
        )
        if rule.matches(job.exit_status, job.signal_reason, job.signal):
            if job.attempt > rule.limit:
                return None
            return await tx.insert_attempt(job)
    return None
