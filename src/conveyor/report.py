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
    if job.timed_out:
        text += " (timed out)"
    if job.soft_failed:
        text += " (soft fail: the build does not fail for it)"
    if job.attempt > 1:
        text += f" (attempt {job.attempt})"
    return text


_STEP_MARKS = {
    "pending": " ",
    "running": "▶",
    "blocked": "⏸",
    "passed": "✔",
    "failed": "✘",
    "skipped": "-",
    "not_run": "-",
}


def step_name(step: p.StepOut) -> str:
    if step.label:
        return step.label
    if step.key:
        return step.key
    return step.kind


def unblock_command(build: p.BuildOut, step: p.StepOut) -> str:
    """The command that unblocks a blocked step, with a placeholder per field."""
    words = ["conveyor build unblock", build.pipeline, str(build.number), step.key or step.id]
    for field in step.fields:
        if field.kind == "select" and field.options:
            placeholder = "|".join(o.value for o in field.options)
        else:
            placeholder = field.hint or field.label or "VALUE"
        if not field.required:
            placeholder += " (optional)"
        words.append(f"--field '{field.key}={placeholder}'")
    return " ".join(words)


def describe_step(build: p.BuildOut, step: p.StepOut) -> str:
    """One line: mark, name, state, and what the state calls for (an error, a triggered
    build, how to unblock)."""
    text = f"{_STEP_MARKS.get(step.state, ' ')} {step_name(step)}: {step.state.replace('_', ' ')}"
    if step.kind not in ("command", "group") and step_name(step) != step.kind:
        text += f" ({step.kind})"
    if step.error:
        text += f": {step.error}"
    if step.triggered_build is not None:
        text += f" → build {step.triggered_build.pipeline}#{step.triggered_build.number}"
    if step.state == "blocked":
        text += f"; unblock with: {unblock_command(build, step)}"
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
        for step in build.steps:
            # Said once: a blocked step (the build waits for someone), or a step that failed
            # without a job to show why.
            if step.state == "blocked" or (step.state == "failed" and step.error):
                seen = f"step:{step.id}"
                if self._seen.get(seen) != step.state:
                    self._seen[seen] = step.state
                    print(describe_step(build, step), file=self.out, flush=True)
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
