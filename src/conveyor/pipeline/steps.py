"""The step models a parsed pipeline is made of.

Each kind is a frozen dataclass with keyword-only fields and defaults, so later code (the
planner, tests, the server) can build steps directly. Keys we do not model are kept as plain
data in `extra`, and the parser warns about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.pipeline.retry import RetryRule

if TYPE_CHECKING:
    from conveyor.pipeline.matrix import Matrix

LABEL_WIDTH = 60
"""Longest label `display_label` returns."""


@dataclass(frozen=True)
class Dependency:
    """One entry of `depends_on`: the key of a step that must finish first."""

    key: str
    allow_failure: bool = False
    """Run even when that step failed (`- step: x` + `allow_failure: true`)."""


@dataclass(frozen=True)
class Plugin:
    """`- docker#v5.8.0: {image: x}`: the full source and its configuration (None when empty)."""

    source: str
    config: Any = None


@dataclass(frozen=True, kw_only=True)
class ManualRetry:
    allowed: bool = True
    permit_on_passed: bool = False
    reason: str | None = None
    """Shown when a manual retry is refused."""


@dataclass(frozen=True, kw_only=True)
class StepBase:
    """What every kind of step has."""

    key: str | None = None
    label: str | None = None
    depends_on: tuple[Dependency, ...] = ()
    allow_dependency_failure: bool = False
    condition: str | None = None
    """The `if:` expression, checked when the step would become runnable."""
    branches: tuple[str, ...] = ()
    """Branch patterns (`main`, `release-*`, `!wip-*`); empty means every branch."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys kept as plain data: ones we do not act on (`notify`, `cache`...) or do not know."""
    line: int = 0
    """1-based line of the step in the source; 0 when not parsed from a file."""


@dataclass(frozen=True, kw_only=True)
class CommandStep(StepBase):
    """Runs `command` in a shell on an agent."""

    command: str = ""
    """A list in the source is joined with "\\n"; a string is kept exactly as written."""
    env: dict[str, str] = field(default_factory=dict)
    agents: dict[str, str] = field(default_factory=dict)
    """Agent tags the job needs, e.g. {"queue": "linux", "os": "!windows"}."""
    plugins: tuple[Plugin, ...] = ()
    parallelism: int | None = None
    matrix: Matrix | None = None
    retry: tuple[RetryRule, ...] = ()
    """Automatic retry rules; the first that matches a failure decides."""
    manual_retry: ManualRetry = ManualRetry()
    soft_fail: bool | tuple[int, ...] = False
    """True: any failure is soft; a tuple: only these exit statuses are."""
    timeout_in_minutes: int | None = None
    artifact_paths: tuple[str, ...] = ()
    concurrency: int | None = None
    concurrency_group: str | None = None
    priority: int = 0
    skip: bool | str = False
    """True or a reason: the step is not run and counts as skipped."""
    cancel_on_build_failing: bool = False


@dataclass(frozen=True, kw_only=True)
class WaitStep(StepBase):
    """Waits for every step before it to finish before any step after it starts."""

    continue_on_failure: bool = False


@dataclass(frozen=True)
class Option:
    label: str
    value: str


@dataclass(frozen=True, kw_only=True)
class Field:
    """A field of a block or input step; its value becomes build meta-data under `key`."""

    kind: str  # text | select
    key: str
    label: str
    hint: str | None = None
    required: bool = True
    default: str | tuple[str, ...] | None = None
    options: tuple[Option, ...] = ()
    multiple: bool = False
    format: str | None = None
    """A regular expression a text value must match in full."""


@dataclass(frozen=True, kw_only=True)
class BlockStep(StepBase):
    """Stops its dependents until someone unblocks it. `kind` is "block" or "input": a block
    step is also a barrier like a wait; an input step holds back only what depends on it."""

    kind: str = "block"
    prompt: str | None = None
    fields: tuple[Field, ...] = ()
    blocked_state: str = "passed"
    """The build's state while a block step waits: passed, failed or running."""


@dataclass(frozen=True, kw_only=True)
class TriggerBuild:
    """The `build:` of a trigger step: what the triggered build gets."""

    message: str | None = None
    commit: str | None = None
    branch: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    meta_data: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TriggerStep(StepBase):
    """Creates a build of another pipeline; waits for it unless `is_async`."""

    pipeline: str
    """The slug of the pipeline to build."""
    is_async: bool = False
    build: TriggerBuild = TriggerBuild()
    soft_fail: bool | tuple[int, ...] = False
    skip: bool | str = False


@dataclass(frozen=True, kw_only=True)
class GroupStep(StepBase):
    """Steps shown and ordered together; its key stands for all of them in `depends_on`."""

    steps: tuple[Step, ...] = ()


Step = CommandStep | WaitStep | BlockStep | TriggerStep | GroupStep
"""Steps that may appear in a group: every kind but a group."""


def display_label(step: Step, index: int) -> str:
    """A short name for a step in UIs.

    The label when there is one, else the first non-blank line of the command (or the
    triggered pipeline), trimmed to `LABEL_WIDTH` characters. `index` (1-based) is the
    fallback: "step 3".
    """
    if step.label and step.label.strip():
        text = step.label.strip()
    elif isinstance(step, WaitStep):
        return "wait"
    elif isinstance(step, BlockStep):
        return step.kind
    elif isinstance(step, TriggerStep):
        text = f"trigger {step.pipeline}"
    elif isinstance(step, GroupStep):
        return f"group {index}"
    else:
        lines = [line.strip() for line in step.command.splitlines() if line.strip()]
        if not lines:
            return f"step {index}"
        text = lines[0]
    if len(text) > LABEL_WIDTH:
        text = text[: LABEL_WIDTH - 1] + "…"
    return text
