"""Buildkite-format pipelines: YAML 1.2 with line numbers → typed, validated steps.

    parse_pipeline(text, filename=..., env=...) -> Pipeline   raises conveyor.errors.PipelineError
    Pipeline(steps, env, agents, extra, warnings)
    CommandStep, WaitStep, BlockStep, TriggerStep, GroupStep; Step is any of them
    check_graph(pipeline, ...)                                 unique keys, known dependencies
    display_label(step, index) -> str                          a short name for UIs

Modules: `loader` (YAML → positioned nodes), `interpolate` ($VAR expansion at upload),
`scalars` (Go-style formatting), `steps` and `document` (models), `context` and `fields`
(errors, warnings, shared field readers), one module per step kind (`command`, `wait`, `block`,
`trigger`, `group`), `plugins`, `matrix`, `retry`, `conditions` (`if:` expressions), `parse`
(document shape and step type inference) and `graph` (checks across steps).
"""

from conveyor.pipeline.conditions import BuildFacts, parse_condition
from conveyor.pipeline.document import Pipeline
from conveyor.pipeline.graph import check_graph, walk
from conveyor.pipeline.parse import parse_pipeline
from conveyor.pipeline.retry import RetryRule
from conveyor.pipeline.steps import (
    BlockStep,
    CommandStep,
    Dependency,
    Field,
    GroupStep,
    ManualRetry,
    Plugin,
    Step,
    TriggerBuild,
    TriggerStep,
    WaitStep,
    display_label,
)

__all__ = [
    "BlockStep",
    "BuildFacts",
    "CommandStep",
    "Dependency",
    "Field",
    "GroupStep",
    "ManualRetry",
    "Pipeline",
    "Plugin",
    "RetryRule",
    "Step",
    "TriggerBuild",
    "TriggerStep",
    "WaitStep",
    "check_graph",
    "display_label",
    "parse_condition",
    "parse_pipeline",
    "walk",
]
