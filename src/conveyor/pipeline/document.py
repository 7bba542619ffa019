"""The parsed pipeline as a whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.pipeline.steps import Step


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """What `parse_pipeline` returns."""

    steps: tuple[Step, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    """Pipeline-level env as written (not interpolated)."""
    agents: dict[str, str] = field(default_factory=dict)
    """Pipeline-level agent tags as written."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Top-level keys not modelled (yet), kept as plain data."""
    warnings: tuple[str, ...] = ()
    """Problems that did not stop parsing; each starts with `file:line:column:`."""
