"""Checks that need the whole pipeline: step keys are unique, dependencies name a step.

Parsing looks at one step at a time, so a file is accepted by `parse_pipeline` even when two
of its steps share a key; a build cannot be made of it, and `conveyor pipeline check` says so.
A `depends_on` may name a step that an earlier upload put in the build (`known` keys).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from conveyor.errors import PipelineError
from conveyor.pipeline.document import Pipeline
from conveyor.pipeline.steps import GroupStep, Step, display_label


def walk(steps: tuple[Step, ...]) -> Iterator[tuple[Step, GroupStep | None]]:
    """Every step with the group it is in, groups before their steps, in document order."""
    for step in steps:
        yield step, None
        if isinstance(step, GroupStep):
            for inner in step.steps:
                yield inner, step


def check_graph(
    pipeline: Pipeline,
    *,
    filename: str = "<pipeline>",
    known: Collection[str] = (),
    unknown_is_error: bool = True,
) -> list[str]:
    """Raise PipelineError for a key used twice (or already in `known`), and for a dependency
    on a key no step has. With `unknown_is_error=False` the latter are returned as warnings
    (a file may be uploaded into a build that has those steps)."""
    lines: dict[str, int] = {}
    for index, (step, _) in enumerate(walk(pipeline.steps), start=1):
        if step.key is None:
            continue
        if step.key in known:
            raise _error(
                f"key {step.key!r} is already used by a step of this build", step, index, filename
            )
        if step.key in lines:
            raise _error(
                f"key {step.key!r} is already used by the step on line {lines[step.key]}",
                step,
                index,
                filename,
            )
        lines[step.key] = step.line
    warnings: list[str] = []
    for index, (step, _) in enumerate(walk(pipeline.steps), start=1):
        for dep in step.depends_on:
            if dep.key in lines or dep.key in known:
                continue
            error = _error(
                f"depends_on names {dep.key!r}, but no step has that key", step, index, filename
            )
            if unknown_is_error:
                raise error
            warnings.append(str(error))
    return warnings


def _error(problem: str, step: Step, index: int, filename: str) -> PipelineError:
    return PipelineError(
        problem, file=filename, line=step.line or None, step=display_label(step, index)
    )
