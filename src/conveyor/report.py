"""Human-readable progress of a build: job transitions as they happen, and a closing summary."""

from __future__ import annotations

import sys
from typing import Protocol

from conveyor import protocol as p

_MARKS = {
    "running": "▶",
    "passed": "✔",
    "failed": "✘",
    "skipped": "-",
    "canceled": "✘",
    "expired": "■",
}


def job_outcome(job: p.JobOut) -> str:
    if job.state == p.JobState.FINISHED:
        if job.signal_reason == p.SignalReason.CANCEL:
            return "canceled"
        return "passed" if job.passed else "failed"
    if job.state in (p.JobState.CANCELED, p.JobState.SKIPPED, p.JobState.EXPIRED):
        return job.state.value
    if job.state in (p.JobState.RUNNING, p.JobState.CANCELING):
        return "running"
    return "waiting"


def describe(job: p.JobOut) -> str:
    outcome = job_outcome(job)
    text = f"{_MARKS.get(outcome, ' ')} {job.label}: {outcome}"
    if outcome == "waiting" and job.waiting_for:
        text += f" ({job.waiting_for})"
    if job.exit_status is not None and outcome in ("passed", "failed", "canceled"):
        text += f" (exit status {job.exit_status}"
        if job.signal_reason:
            text += f", {job.signal_reason}"
        text += ")"
    return text


class Writable(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class BuildReporter:
    """Prints each job's outcome once it changes; `summary` prints the table at the end."""

    def __init__(self, out: Writable | None = None):
        self.out: Writable = out or sys.stdout
        self._seen: dict[str, str] = {}

    def update(self, build: p.BuildOut) -> None:
        for job in build.jobs:
            outcome = job_outcome(job)
            if outcome == "waiting":
                # Said once when no connected agent can take the job: else a wait looks hung.
                if not job.waiting_for or self._seen.get(job.id) == job.waiting_for:
                    continue
                outcome = job.waiting_for
            if self._seen.get(job.id) == outcome:
                continue
            self._seen[job.id] = outcome
            print(describe(job), file=self.out, flush=True)

    def summary(self, build: p.BuildOut) -> None:
        print(f"\nBuild {build.pipeline}#{build.number}: {build.state.value}", file=self.out)
        for job in build.jobs:
            took = ""
            if job.started_at and job.finished_at:
                took = f" in {(job.finished_at - job.started_at).total_seconds():.1f}s"
            print(f"  {describe(job)}{took}", file=self.out)
        self.out.flush()
