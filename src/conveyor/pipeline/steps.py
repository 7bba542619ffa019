"""The step models a parsed pipeline is made of.

Each kind is a frozen dataclass with keyword-only fields and defaults, so later code (matrix
expansion, tests, the server) can build steps directly. Keys we do not model yet are kept as
plain data in `extra`, and the parser warns about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.pipeline.retry import RetryRule

LABEL_WIDTH = 60
"""Longest label `display_label` returns."""


@dataclass(frozen=True, kw_only=True)
class CommandStep:
    """Runs `command` in a shell on an agent."""

    command: str
    """A list in the source is joined with "\\n"; a string is kept exactly as written."""
    label: str | None = None
    key: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    agents: dict[str, str] = field(default_factory=dict)
    """Agent tags the job needs, e.g. {"queue": "linux"}."""
    depends_on: tuple[str, ...] = ()
    """Keys of the steps that must finish first."""
    retry: tuple[RetryRule, ...] = ()
    """Automatic retry rules; the first that matches a failure decides."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys not modelled (yet), as plain data: `soft_fail`, `timeout_in_minutes`, `if`..."""
    line: int = 0
    """1-based line of the step in the source; 0 when not parsed from a file."""


@dataclass(frozen=True, kw_only=True)
class WaitStep:
    """Waits for every step before it to finish before any step after it starts."""

    continue_on_failure: bool = False
    key: str | None = None
    label: str | None = None
    depends_on: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys not modelled (yet), as plain data: `if`, `allow_dependency_failure`..."""
    line: int = 0


Step = CommandStep | WaitStep


def display_label(step: Step, index: int) -> str:
    """A short name for a step in UIs.

    The label when there is one, else the first non-blank line of the command, trimmed to
    `LABEL_WIDTH` characters. `index` (1-based) is the fallback: "step 3".
    """
    if step.label and step.label.strip():
        text = step.label.strip()
    elif isinstance(step, WaitStep):
        return "wait"
    else:
        lines = [line.strip() for line in step.command.splitlines() if line.strip()]
        if not lines:
            return f"step {index}"
        text = lines[0]
    if len(text) > LABEL_WIDTH:
        text = text[: LABEL_WIDTH - 1] + "…"
    return text
