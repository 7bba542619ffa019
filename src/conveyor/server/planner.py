"""A parsed pipeline → the rows of a build: steps, their dependencies, and their jobs.

Ordering rules (what `depends_on` each step gets):
- A step depends on the last `wait` (or `block`) before it at its level, plus its own
  `depends_on`.
- A `wait` or `block` depends on every step since the previous one at its level (a group
  counts as one step), so it waits for all of them; `input` steps do not act as barriers.
- A group becomes one row that settles when all its steps have; its steps get the group's
  dependencies, `if`, branch filter and `allow_dependency_failure`. A key of a group in
  another step's `depends_on` means the whole group.
- A pipeline uploaded by a running job (`Upload`) is inserted right after the uploading step:
  a `wait` in it also waits for the steps the uploading one ran beside, and `depends_on` may
  name any step already in the build.

Jobs: a command step has one job, or one per (matrix combination, parallel index), each with
its label, command and env filled in. Everything the scheduler needs later (retry rules,
conditions, soft_fail...) goes into the step's `config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import PipelineError
from conveyor.pipeline import (
    BlockStep,
    CommandStep,
    GroupStep,
    Pipeline,
    Step,
    TriggerStep,
    WaitStep,
    display_label,
)
from conveyor.pipeline.matrix import MatrixJob, has_token, label_suffix, substitute
from conveyor.storage.rows import NewJob, NewStep


def _is_barrier(step: Step) -> bool:
    """Wait and block steps order what comes after them; input steps do not."""
    return isinstance(step, WaitStep) or (isinstance(step, BlockStep) and step.kind == "block")


@dataclass(frozen=True)
class Upload:
    """Where an uploaded pipeline goes in a running build."""

    keys: Mapping[str, str]
    """Keys of the steps already in the build → their ids."""
    segment: list[str] = field(default_factory=list)
    """Ids of the steps a `wait` in the upload must also wait for (the uploader's level)."""


@dataclass
class _Level:
    """Ordering state of one level: the top of the pipeline, or one group."""

    barrier: list[int]  # the barrier the next step depends on (0 or 1 positions)
    since: list[int] = field(default_factory=list)  # steps since that barrier
    segment_ids: list[str] = field(default_factory=list)  # uploads: existing steps beside us


def plan_steps(
    pipeline: Pipeline, *, filename: str = "<pipeline>", upload: Upload | None = None
) -> list[NewStep]:
    """The rows to insert, in order; raises PipelineError for a cycle or an unknown key."""
    planner = _Planner(pipeline, filename, upload)
    planner.plan()
    planner.check_acyclic()
    return planner.rows


class _Planner:
    def __init__(self, pipeline: Pipeline, filename: str, upload: Upload | None) -> None:
        self.pipeline = pipeline
        self.filename = filename
        self.upload = upload
        self.rows: list[NewStep] = []
        self.steps: list[Step] = []  # the source step of each row, for messages
        self.keys: dict[str, int] = {}
        self._group_position = -1  # the row of the group being planned
        self._number_keys(pipeline.steps)

    def _number_keys(self, steps: tuple[Step, ...]) -> None:
        position = 0
        for step in steps:
            if step.key is not None:
                self.keys[step.key] = position
            position += 1
            if isinstance(step, GroupStep):
                for inner in step.steps:
                    if inner.key is not None:
                        self.keys[inner.key] = position
                    position += 1

    def plan(self) -> None:
        top = _Level(barrier=[], segment_ids=list(self.upload.segment) if self.upload else [])
        for step in self.pipeline.steps:
            self._add(step, top, group=None)

    def _add(self, step: Step, level: _Level, group: GroupStep | None) -> None:
        position = len(self.rows)
        explicit, explicit_ids, allow, allow_ids = self._dependencies(step, position)
        inherited: list[int] = []
        inherited_ids: list[str] = []
        allow_all = step.allow_dependency_failure
        conditions = [step.condition] if step.condition else []
        branches = [list(step.branches)] if step.branches else []
        if group is not None:
            group_row = self.rows[self._group_position]
            inherited = list(group_row.depends_on)
            inherited_ids = list(group_row.depends_on_ids)
            allow_all = allow_all or group.allow_dependency_failure
            allow += group_row.allow_failure
            allow_ids += group_row.config.get("allow_failure_ids", [])
            conditions = ([group.condition] if group.condition else []) + conditions
            branches = ([list(group.branches)] if group.branches else []) + branches

        depends = {*level.barrier, *explicit, *inherited}
        depends_ids = {*explicit_ids, *inherited_ids}
        if _is_barrier(step):
            depends |= set(level.since)
            depends_ids |= set(level.segment_ids)
        common: dict[str, Any] = {
            "conditions": conditions,
            "branches": branches,
            "allow_failure_ids": sorted(set(allow_ids)),
            "line": step.line,
        }
        label = display_label(step, position + 1)
        row = NewStep(
            kind=_kind(step),
            key=step.key,
            label=step.label if isinstance(step, WaitStep) else label,
            config={**common, **self._config(step)},
            depends_on=sorted(depends),
            depends_on_ids=sorted(depends_ids),
            allow_dependency_failure=allow_all
            or (isinstance(step, WaitStep) and step.continue_on_failure),
            allow_failure=sorted(set(allow)),
            jobs=self._jobs(step, label) if isinstance(step, CommandStep) else [],
        )
        self.rows.append(row)
        self.steps.append(step)

        if isinstance(step, GroupStep):
            self._group_position = position
            inner = _Level(barrier=[])
            for child in step.steps:
                self._add(child, inner, group=step)
            children = list(range(position + 1, len(self.rows)))
            self.rows[position] = dataclasses.replace(row, children=children)
        if _is_barrier(step):
            level.barrier, level.since, level.segment_ids = [position], [], []
        else:
            level.since.append(position)

    def _dependencies(
        self, step: Step, position: int
    ) -> tuple[list[int], list[str], list[int], list[str]]:
        """Explicit dependencies: positions in this plan and ids of existing steps, and the
        ones that may fail."""
        positions: list[int] = []
        ids: list[str] = []
        allow: list[int] = []
        allow_ids: list[str] = []
        for dep in step.depends_on:
            if dep.key in self.keys:
                positions.append(self.keys[dep.key])
                if dep.allow_failure:
                    allow.append(self.keys[dep.key])
            elif self.upload is not None and dep.key in self.upload.keys:
                ids.append(self.upload.keys[dep.key])
                if dep.allow_failure:
                    allow_ids.append(self.upload.keys[dep.key])
            else:
                raise self._error(
                    f"depends_on names {dep.key!r}, but no step has that key", step, position
                )
        return positions, ids, allow, allow_ids

    def _config(self, step: Step) -> dict[str, Any]:
        if isinstance(step, WaitStep):
            return {"continue_on_failure": step.continue_on_failure}
        if isinstance(step, BlockStep):
            return {
                "block_kind": step.kind,
                "prompt": step.prompt,
                "fields": [dataclasses.asdict(f) for f in step.fields],
                "blocked_state": step.blocked_state,
            }
        if isinstance(step, TriggerStep):
            return {
                "trigger": step.pipeline,
                "async": step.is_async,
                "build": dataclasses.asdict(step.build),
                "soft_fail": _soft_fail(step.soft_fail),
                "skip": step.skip,
            }
        if isinstance(step, GroupStep):
            return {}
        return {
            "command": step.command,
            "env": step.env,
            "agents": {**self.pipeline.agents, **step.agents},
            "plugins": [dataclasses.asdict(p) for p in step.plugins],
            "retry": [dataclasses.asdict(rule) for rule in step.retry],
            "manual_retry": dataclasses.asdict(step.manual_retry),
            "soft_fail": _soft_fail(step.soft_fail),
            "timeout_in_minutes": step.timeout_in_minutes,
            "artifact_paths": list(step.artifact_paths),
            "skip": step.skip,
            "cancel_on_build_failing": step.cancel_on_build_failing,
        }

    def _jobs(self, step: CommandStep, label: str) -> list[NewJob]:
        combos: list[MatrixJob | None] = list(step.matrix.jobs()) if step.matrix else [None]
        count = step.parallelism or 1
        jobs: list[NewJob] = []
        base_env = {**self.pipeline.env, **step.env}
        agents = {**self.pipeline.agents, **step.agents}
        for combo in combos:
            soft = _soft_fail(step.soft_fail)
            if combo is not None and "soft_fail" in combo.extra:
                soft = _soft_fail_data(combo.extra["soft_fail"])
            for index in range(count):
                job_label = label
                command, env, query = step.command, dict(base_env), dict(agents)
                if combo is not None:
                    job_label = substitute(label, combo)
                    if not has_token(label):
                        job_label = f"{label} {label_suffix(combo)}"
                    command = substitute(command, combo)
                    env = substitute(env, combo)
                    query = substitute(query, combo)
                if step.parallelism:
                    job_label = f"{job_label} ({index + 1}/{count})"
                    for prefix in ("CONVEYOR", "BUILDKITE"):
                        env[f"{prefix}_PARALLEL_JOB"] = str(index)
                        env[f"{prefix}_PARALLEL_JOB_COUNT"] = str(count)
                jobs.append(
                    NewJob(
                        label=job_label[:500],
                        command=command,
                        env=env,
                        agent_query=query,
                        priority=step.priority,
                        concurrency_group=step.concurrency_group,
                        concurrency_limit=step.concurrency,
                        soft_fail=soft,
                        timeout_minutes=step.timeout_in_minutes,
                    )
                )
        return jobs

    def check_acyclic(self) -> None:
        visiting: set[int] = set()
        done: set[int] = set()

        def visit(position: int) -> None:
            if position in done:
                return
            if position in visiting:
                raise self._error("depends_on forms a cycle", self.steps[position], position)
            visiting.add(position)
            row = self.rows[position]
            for dep in (*row.depends_on, *row.children):
                visit(dep)
            visiting.discard(position)
            done.add(position)

        for position in range(len(self.rows)):
            visit(position)

    def _error(self, problem: str, step: Step, position: int) -> PipelineError:
        return PipelineError(
            problem,
            file=self.filename,
            line=step.line or None,
            step=step.label or step.key or f"step {position + 1}",
        )


def _kind(step: Step) -> str:
    if isinstance(step, CommandStep):
        return "command"
    if isinstance(step, WaitStep):
        return "wait"
    if isinstance(step, BlockStep):
        return step.kind
    if isinstance(step, TriggerStep):
        return "trigger"
    return "group"


def _soft_fail(value: bool | tuple[int, ...]) -> bool | list[int] | None:
    if value is True:
        return True
    if isinstance(value, tuple) and value:
        return list(value)
    return None


def _soft_fail_data(value: Any) -> bool | list[int] | None:
    """soft_fail from a matrix adjustment, as plain data: true/false or [{exit_status: N}]."""
    if isinstance(value, bool):
        return True if value else None
    if isinstance(value, list):
        statuses: list[int] = []
        for item in value:
            status = item.get("exit_status") if isinstance(item, dict) else None
            if status == "*":
                return True
            if isinstance(status, int) and not isinstance(status, bool):
                statuses.append(status)
        return statuses or None
    return None
