"""What a build's steps and jobs say about it: the state they put it in, and which attempt of
each job counts. Pure functions of the rows, shared by the scheduler and retries."""

from __future__ import annotations

import json
from collections.abc import Iterable

from conveyor.protocol import BuildState, JobState
from conveyor.storage.rows import BuildRow, JobRow

SETTLED = frozenset({"passed", "failed", "skipped", "not_run"})
_STARTED_JOB_STATES = frozenset(
    {JobState.ASSIGNED, JobState.ACCEPTED, JobState.RUNNING, JobState.CANCELING, JobState.FINISHED}
)


def lineage(job: JobRow) -> str:
    """What the attempts of one job have in common (a step may have several jobs)."""
    return json.dumps([job.label, job.command, sorted(job.env.items())])


def latest_attempts(jobs: Iterable[JobRow]) -> list[JobRow]:
    latest: dict[str, JobRow] = {}
    for job in jobs:
        key = lineage(job)
        if key not in latest or job.attempt > latest[key].attempt:
            latest[key] = job
    return list(latest.values())


def derive_state(build: BuildRow) -> BuildState:
    """The state a build's steps and jobs put it in (its stored state may lag behind within
    one pass of `advance_build`: `if: build.state == "failing"` must see the failure)."""
    if BuildState(build.state).terminal:
        return BuildState(build.state)
    states = {s.state for s in build.steps}
    if states <= SETTLED:
        if build.state == BuildState.CANCELING:
            return BuildState.CANCELED
        return BuildState.FAILED if "failed" in states else BuildState.PASSED
    if build.state == BuildState.CANCELING:
        return BuildState.CANCELING
    started = (
        build.started_at is not None
        or any(j.state in _STARTED_JOB_STATES for j in build.jobs)
        or any(s.state == "running" and s.kind != "command" for s in build.steps)
    )
    # A group row is `running` while its steps are: it is not progress of its own.
    waiting = {s.state for s in build.steps if s.kind != "group"} - SETTLED
    if waiting <= {"blocked", "pending"} and "blocked" in waiting and not _can_progress(build):
        return BuildState.BLOCKED
    if "failed" in states:
        return BuildState.FAILING
    if started or build.state != BuildState.SCHEDULED:
        return BuildState.RUNNING
    return BuildState.SCHEDULED


def _can_progress(build: BuildRow) -> bool:
    """Is anything (other than a group) running?"""
    return any(s.state == "running" and s.kind != "group" for s in build.steps)
