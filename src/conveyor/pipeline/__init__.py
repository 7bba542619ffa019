"""Buildkite-format pipelines: YAML 1.2 with line numbers → typed, validated steps.

    parse_pipeline(text, filename=...) -> Pipeline     raises conveyor.errors.PipelineError
    Pipeline(steps, env, agents, extra, warnings)
    CommandStep, WaitStep; Step = CommandStep | WaitStep
    display_label(step, index) -> str                  a short name for UIs

Modules: `loader` (YAML → positioned nodes), `scalars` (Go-style formatting), `steps` and
`document` (models), `context` and `fields` (errors, warnings, shared field readers), `command`
and `wait` (one per step kind), `retry` (automatic retry rules), `parse` (document shape and
step type inference).
"""

from conveyor.pipeline.document import Pipeline
from conveyor.pipeline.parse import parse_pipeline
from conveyor.pipeline.retry import RetryRule
from conveyor.pipeline.steps import CommandStep, Step, WaitStep, display_label

__all__ = [
    "CommandStep",
    "Pipeline",
    "RetryRule",
    "Step",
    "WaitStep",
    "display_label",
    "parse_pipeline",
]
