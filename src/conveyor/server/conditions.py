"""Whether a step runs once its dependencies are settled: `skip`, branch filters, `if`."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from conveyor.errors import PipelineError
from conveyor.pipeline import BuildFacts, parse_condition
from conveyor.server.buildstate import derive_state
from conveyor.storage import Tx
from conveyor.storage.rows import BuildRow, StepRow


async def skip_reason(tx: Tx, build: BuildRow, step: StepRow) -> str | None:
    """Why the step does not run (`skip`, branches, `if`), or None. "error: ..." on a bad
    `if` that could only be found out now (e.g. `${X:?}`)."""
    config = step.config
    if config.get("skip"):
        return "skip"
    for patterns in config.get("branches", []):
        if not branch_matches(build.branch, patterns):
            return "branches"
    conditions = config.get("conditions", [])
    if not conditions:
        return None
    facts = await _facts(tx, build)
    for text in conditions:
        try:
            if not parse_condition(text).evaluate(facts):
                return "if"
        except PipelineError as exc:
            return f"error: the 'if' expression {text!r} failed: {exc.problem}"
    return None


def branch_matches(branch: str, patterns: Iterable[str]) -> bool:
    """Buildkite branch filters: any plain pattern matches (`*` wildcards), no `!` one does."""
    patterns = list(patterns)
    positive = [p for p in patterns if not p.startswith("!")]
    negative = [p[1:] for p in patterns if p.startswith("!")]
    if any(fnmatch.fnmatchcase(branch, p) for p in negative):
        return False
    return not positive or any(fnmatch.fnmatchcase(branch, p) for p in positive)


async def _facts(tx: Tx, build: BuildRow) -> BuildFacts:
    pipeline = await tx.get_pipeline(build.pipeline_slug)
    tag = build.env.get("BUILDKITE_TAG") or build.env.get("CONVEYOR_TAG")
    return BuildFacts(
        branch=build.branch,
        commit=build.commit,
        message=build.message,
        source=build.source,
        tag=tag or None,
        state=derive_state(build).value,
        id=build.id,
        number=build.number,
        env=build.env,
        pipeline_slug=pipeline.slug,
        pipeline_id=pipeline.id,
        pipeline_default_branch=pipeline.default_branch,
        pipeline_repository=pipeline.repository,
    )


__all__ = ["branch_matches", "skip_reason"]
