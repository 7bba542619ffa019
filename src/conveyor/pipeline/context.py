"""Where parsing is up to: the file, the step, and the warnings so far.

Errors and warnings read the same way: `file:line:column: problem in step 'name'`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from conveyor.errors import PipelineError
from conveyor.pipeline.loader import Mark


@dataclass(frozen=True)
class Context:
    filename: str
    warnings: list[str] = field(default_factory=list)  # shared by every `for_step` copy
    step: str | None = None
    """The step being parsed: its label, else its key, else "step N"."""

    def for_step(self, name: str) -> Context:
        return replace(self, step=name)

    def error(self, problem: str, mark: Mark) -> PipelineError:
        return PipelineError(
            problem, file=self.filename, line=mark.line, column=mark.column, step=self.step
        )

    def warn(self, problem: str, mark: Mark) -> None:
        self.warnings.append(str(self.error(problem, mark)))
