"""The environment the server gives a job: pipeline, step and build env plus `CONVEYOR_*` facts.

The common `BUILDKITE_*` names are set as aliases so pipelines written for Buildkite read the
values they expect. The agent adds its own facts (agent name, build path, job token).
"""

from __future__ import annotations

import json

from conveyor.storage.rows import AgentRow, BuildRow, JobRow, StepRow

# CONVEYOR_X → BUILDKITE_X for every fact both names describe.
_ALIASES = {
    "CONVEYOR_JOB_ID": "BUILDKITE_JOB_ID",
    "CONVEYOR_BUILD_ID": "BUILDKITE_BUILD_ID",
    "CONVEYOR_BUILD_NUMBER": "BUILDKITE_BUILD_NUMBER",
    "CONVEYOR_BUILD_URL": "BUILDKITE_BUILD_URL",
    "CONVEYOR_PIPELINE_SLUG": "BUILDKITE_PIPELINE_SLUG",
    "CONVEYOR_STEP_KEY": "BUILDKITE_STEP_KEY",
    "CONVEYOR_STEP_ID": "BUILDKITE_STEP_ID",
    "CONVEYOR_LABEL": "BUILDKITE_LABEL",
    "CONVEYOR_COMMAND": "BUILDKITE_COMMAND",
    "CONVEYOR_BRANCH": "BUILDKITE_BRANCH",
    "CONVEYOR_COMMIT": "BUILDKITE_COMMIT",
    "CONVEYOR_MESSAGE": "BUILDKITE_MESSAGE",
    "CONVEYOR_SOURCE": "BUILDKITE_SOURCE",
    "CONVEYOR_RETRY_COUNT": "BUILDKITE_RETRY_COUNT",
    "CONVEYOR_AGENT_ID": "BUILDKITE_AGENT_ID",
    "CONVEYOR_REPO": "BUILDKITE_REPO",
    "CONVEYOR_PLUGINS": "BUILDKITE_PLUGINS",
    "CONVEYOR_ARTIFACT_PATHS": "BUILDKITE_ARTIFACT_PATHS",
}

_MAX_MESSAGE = 64 * 1024


def job_env(
    build: BuildRow, step: StepRow, job: JobRow, agent: AgentRow, *, endpoint: str
) -> dict[str, str]:
    config = step.config
    facts = {
        "CI": "true",
        "CONVEYOR": "true",
        "BUILDKITE": "true",
        "CONVEYOR_JOB_ID": job.id,
        "CONVEYOR_BUILD_ID": build.id,
        "CONVEYOR_BUILD_NUMBER": str(build.number),
        "CONVEYOR_BUILD_URL": f"{endpoint}/builds/{build.pipeline_slug}/{build.number}",
        "CONVEYOR_PIPELINE_SLUG": build.pipeline_slug,
        "CONVEYOR_STEP_KEY": step.key or "",
        "CONVEYOR_STEP_ID": step.id,
        "CONVEYOR_LABEL": job.label,
        "CONVEYOR_COMMAND": job.command,
        "CONVEYOR_BRANCH": build.branch,
        "CONVEYOR_COMMIT": build.commit,
        "CONVEYOR_MESSAGE": build.message[:_MAX_MESSAGE],
        "CONVEYOR_SOURCE": build.source,
        "CONVEYOR_RETRY_COUNT": str(job.attempt - 1),
        "CONVEYOR_AGENT_ID": agent.id,
        "CONVEYOR_REPO": build.repository,
        # What the job executor runs: as Buildkite's executor reads them.
        "CONVEYOR_PLUGINS": json.dumps(config.get("plugins") or [], separators=(",", ":")),
        "CONVEYOR_ARTIFACT_PATHS": ";".join(str(g) for g in config.get("artifact_paths") or []),
    }
    for name, alias in _ALIASES.items():
        facts[alias] = facts[name]
    # Build env first, then the step's own env; Conveyor's facts last so they cannot be faked.
    return {**build.env, **job.env, **facts}
