"""`matrix:` on command steps — one step template expanded to a job per combination of values.

    matrix: [linux, darwin, 47]            # one unnamed dimension; the step says {{matrix}}
    matrix:
      setup: [linux, darwin]               # the same, with room for adjustments
      adjustments:
        - with: plan9                      # one value (a one-item list is accepted too)
    matrix:
      setup:                               # named dimensions; {{matrix.os}}, {{matrix.arch}}
        os: [linux, darwin]
        arch: [amd64, arm64]
      adjustments:
        - with: {os: darwin, arch: amd64}
          skip: "no Intel Macs left"       # true, or a reason of at most 70 characters
        - with: {os: plan9, arch: arm64}   # not in the cross-product: added as a job
          soft_fail: true                  # other keys travel with that job, as plain data

The jobs are the cross-product of the setup, plus each adjustment combination that is not
skipped, minus every combination that any adjustment skips. Values are strings formatted the Go
way (`47` → "47", `true` → "true") because tokens put them into text.

Tokens are substituted into the strings of the step (command, label, env values, plugin
config...), never into mapping keys and never into the matrix itself. `check_tokens` rejects, at
parse time, every token that would not be replaced, so `substitute` never has to fail.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from conveyor.pipeline.context import Context
from conveyor.pipeline.loader import (
    MapEntry,
    MapNode,
    Mark,
    Node,
    ScalarNode,
    SeqNode,
    describe,
    to_plain,
)
from conveyor.pipeline.scalars import go_string

MAX_JOBS = 1000
"""Most jobs one matrix may expand to. Conveyor's own cap, so that one step cannot flood the
queue by mistake (three dimensions of 20 values is already 8000 jobs). Buildkite's hosted
service has smaller limits of its own; we do not copy them."""

SKIP_REASON_MAX_LENGTH = 70
"""Longest `skip` reason, as in Buildkite's pipeline schema."""

UNNAMED = ""
"""The key of the single dimension of an unnamed matrix, in `dimensions` and `MatrixJob.values`."""

ADJUSTMENT_KEYS = frozenset({"with", "skip", "soft_fail"})
"""Keys Buildkite documents for an adjustment. Others are kept too, but with a warning."""

DIMENSION_NAME = re.compile(r"[a-zA-Z0-9_]+")

TOKEN = re.compile(r"\{\{[ \t]*matrix(?:\.([^{}]*?))?[ \t]*\}\}")
"""`{{matrix}}` (group 1 is None) or `{{matrix.NAME}}`; spaces and tabs may pad the inside."""

Combination = tuple[str, ...]
"""One value per dimension, in setup order."""


@dataclass(frozen=True)
class MatrixJob:
    """One job of an expanded matrix."""

    values: dict[str, str]
    """Dimension name → value, in setup order; `{"": "one"}` for an unnamed matrix."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys the adjustments for this combination carry besides `with`/`skip` (`soft_fail`...)."""


@dataclass(frozen=True, kw_only=True)
class Adjustment:
    """One item of `adjustments`: a combination to add, to skip, or to give extra keys."""

    values: dict[str, str]
    """A value for every dimension of the setup (`{"": v}` when unnamed), in setup order."""
    skip: bool | str = False
    """True or a non-empty reason: the combination is not run, wherever else it appears."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Matrix:
    """A step's matrix as written; `jobs()` expands it. Built by `read_matrix`, or directly."""

    dimensions: dict[str, tuple[str, ...]]
    """Name → values in setup order; an empty tuple is kept (adjustments may supply values)."""
    adjustments: tuple[Adjustment, ...] = ()
    named: bool
    """False for a bare list or a `setup:` list: the single dimension is `UNNAMED`."""

    def jobs(self) -> list[MatrixJob]:
        """Cross-product (first dimension varies slowest), then added combinations in
        adjustment order; skipped combinations are left out. An adjustment naming a
        combination already present adds its extra keys to that job instead of a new job."""
        names = tuple(self.dimensions)
        found: dict[Combination, dict[str, Any]] = {
            combination: {} for combination in itertools.product(*self.dimensions.values())
        }
        skipped: set[Combination] = set()
        for adjustment in self.adjustments:
            combination = _combination(names, adjustment)
            if adjustment.skip:
                skipped.add(combination)
            else:
                found.setdefault(combination, {}).update(adjustment.extra)
        return [
            MatrixJob(dict(zip(names, combination, strict=True)), extra)
            for combination, extra in found.items()
            if combination not in skipped
        ]

    def job_count(self) -> int:
        """`len(self.jobs())` without building them: cheap even for a huge cross-product."""
        names = tuple(self.dimensions)
        setup = [set(values) for values in self.dimensions.values()]

        def in_setup(combination: Combination) -> bool:
            return all(value in values for value, values in zip(combination, setup, strict=True))

        skipped = {_combination(names, a) for a in self.adjustments if a.skip}
        added = {_combination(names, a) for a in self.adjustments if not a.skip}
        added = {c for c in added if not in_setup(c)} - skipped
        product = math.prod(len(values) for values in setup)
        return product - sum(1 for c in skipped if in_setup(c)) + len(added)


def _combination(names: tuple[str, ...], adjustment: Adjustment) -> Combination:
    return tuple(adjustment.values[name] for name in names)


# --- reading -------------------------------------------------------------------------------------


def read_matrix(ctx: Context, entry: MapEntry) -> Matrix:
    """The `matrix` entry of a command step, validated and known to give 1..MAX_JOBS jobs.

    `matrix: null` is an error here; a caller that lets null mean "no matrix" checks first.
    """
    node = entry.value
    if isinstance(node, SeqNode):
        matrix = Matrix(
            dimensions={UNNAMED: _values(ctx, node, "the matrix")}, adjustments=(), named=False
        )
    elif isinstance(node, MapNode):
        matrix = _matrix_mapping(ctx, node)
    else:
        raise ctx.error(
            f"'matrix' must be a list of values or a mapping with 'setup', got {describe(node)}",
            node.mark,
        )
    count = matrix.job_count()
    if count > MAX_JOBS:
        raise ctx.error(
            f"the matrix gives {count} jobs, more than the limit of {MAX_JOBS}", node.mark
        )
    if count == 0:
        # Almost surely a mistake (an empty dimension, or everything skipped), and a step that
        # runs nothing would pass silently.
        raise ctx.error(
            "the matrix gives no jobs: its setup has an empty dimension or every combination "
            "is skipped, and no adjustment adds one",
            node.mark,
        )
    return matrix


def _matrix_mapping(ctx: Context, node: MapNode) -> Matrix:
    for name, item in node.entries.items():
        if name not in ("setup", "adjustments"):
            raise ctx.error(
                f"unknown key {name!r} in 'matrix': expected 'setup' or 'adjustments' "
                "(dimensions go under 'setup')",
                item.key_mark,
            )
    setup = node.get("setup")
    if setup is None:
        raise ctx.error(
            "'matrix' needs 'setup': a list of values, or a mapping of dimension names to lists",
            node.mark,
        )
    value = setup.value
    if isinstance(value, SeqNode):
        dimensions = {UNNAMED: _values(ctx, value, "'setup'")}
        named = False
    elif isinstance(value, MapNode):
        dimensions = _named_dimensions(ctx, value)
        named = True
    else:
        raise ctx.error(
            f"'setup' must be a list of values or a mapping of dimension names to lists, "
            f"got {describe(value)}",
            value.mark,
        )
    adjustments = node.get("adjustments")
    return Matrix(
        dimensions=dimensions,
        adjustments=(
            () if adjustments is None else _adjustments(ctx, adjustments, dimensions, named)
        ),
        named=named,
    )


def _named_dimensions(ctx: Context, node: MapNode) -> dict[str, tuple[str, ...]]:
    if not node.entries:
        raise ctx.error("'setup' must name at least one dimension", node.mark)
    dimensions: dict[str, tuple[str, ...]] = {}
    for name, entry in node.entries.items():
        if not DIMENSION_NAME.fullmatch(name):
            raise ctx.error(
                f"matrix dimension name {name!r} may contain only letters, digits and _",
                entry.key_mark,
            )
        if not isinstance(entry.value, SeqNode):
            raise ctx.error(
                f"matrix dimension {name!r} must be a list of values, got {describe(entry.value)}",
                entry.value.mark,
            )
        dimensions[name] = _values(ctx, entry.value, f"matrix dimension {name!r}")
    return dimensions


def _values(ctx: Context, node: SeqNode, where: str) -> tuple[str, ...]:
    values: list[str] = []
    for item in node.items:
        value = _scalar(ctx, item, f"each value of {where}")
        if value in values:
            # Two jobs with the same values could not be told apart, nor skipped one at a time.
            raise ctx.error(f"{value!r} appears twice in {where}", item.mark)
        values.append(value)
    return tuple(values)


def _scalar(ctx: Context, node: Node, what: str) -> str:
    if isinstance(node, ScalarNode) and node.value is not None:
        return go_string(node.value)
    raise ctx.error(f"{what} must be a string, number or boolean, got {describe(node)}", node.mark)


def _adjustments(
    ctx: Context, entry: MapEntry, dimensions: dict[str, tuple[str, ...]], named: bool
) -> tuple[Adjustment, ...]:
    node = entry.value
    if isinstance(node, ScalarNode) and node.value is None:
        return ()
    if not isinstance(node, SeqNode):
        raise ctx.error(f"'adjustments' must be a list, got {describe(node)}", node.mark)
    adjustments = []
    for item in node.items:
        if not isinstance(item, MapNode):
            raise ctx.error(
                f"each adjustment must be a mapping with 'with', got {describe(item)}", item.mark
            )
        adjustments.append(_adjustment(ctx, item, dimensions, named))
    return tuple(adjustments)


def _adjustment(
    ctx: Context, node: MapNode, dimensions: dict[str, tuple[str, ...]], named: bool
) -> Adjustment:
    with_ = node.get("with")
    if with_ is None:
        raise ctx.error("a matrix adjustment needs 'with': the combination it is about", node.mark)
    values = _named_with(ctx, with_, dimensions) if named else {UNNAMED: _unnamed_with(ctx, with_)}
    skip: bool | str = False
    extra: dict[str, Any] = {}
    for name, entry in node.entries.items():
        if name == "skip":
            skip = _skip(ctx, entry)
        elif name != "with":
            if name not in ADJUSTMENT_KEYS:
                ctx.warn(
                    f"unknown key {name!r} in a matrix adjustment (kept with the job)",
                    entry.key_mark,
                )
            extra[name] = to_plain(entry.value)
    return Adjustment(values=values, skip=skip, extra=extra)


def _unnamed_with(ctx: Context, entry: MapEntry) -> str:
    node = entry.value
    if isinstance(node, MapNode):
        raise ctx.error(
            "'with' must be a single value: this matrix has one unnamed dimension "
            "(for named dimensions, make 'setup' a mapping)",
            node.mark,
        )
    if isinstance(node, SeqNode):  # `with: [three]`, as Buildkite's own examples write it
        if len(node.items) != 1:
            raise ctx.error(
                f"'with' gives {len(node.items)} values, but this matrix has 1 dimension",
                node.mark,
            )
        return _scalar(ctx, node.items[0], "'with'")
    return _scalar(ctx, node, "'with'")


def _named_with(
    ctx: Context, entry: MapEntry, dimensions: dict[str, tuple[str, ...]]
) -> dict[str, str]:
    node = entry.value
    if not isinstance(node, MapNode):
        raise ctx.error(
            f"'with' must be a mapping of dimension names to values, because 'setup' names its "
            f"dimensions, got {describe(node)}",
            node.mark,
        )
    given: dict[str, str] = {}
    for name, item in node.entries.items():
        if name not in dimensions:
            raise ctx.error(
                f"unknown matrix dimension {name!r} in 'with': expected {_names(dimensions)}",
                item.key_mark,
            )
        given[name] = _scalar(ctx, item.value, f"'with' value {name!r}")
    if len(given) != len(dimensions):
        missing = ", ".join(repr(name) for name in dimensions if name not in given)
        raise ctx.error(
            f"'with' gives {len(given)} of the {len(dimensions)} matrix dimensions "
            f"(missing {missing})",
            node.mark,
        )
    return {name: given[name] for name in dimensions}  # setup order, whatever the written order


def _skip(ctx: Context, entry: MapEntry) -> bool | str:
    node = entry.value
    value = node.value if isinstance(node, ScalarNode) else None
    if isinstance(node, ScalarNode) and value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > SKIP_REASON_MAX_LENGTH:
            raise ctx.error(
                f"the skip reason is {len(value)} characters long, more than the limit of "
                f"{SKIP_REASON_MAX_LENGTH}",
                node.mark,
            )
        return value or False  # an empty reason skips nothing, as an empty `if` would not
    raise ctx.error(f"'skip' must be true, false or a reason, got {describe(node)}", node.mark)


def _names(dimensions: dict[str, tuple[str, ...]]) -> str:
    return "one of " + ", ".join(repr(name) for name in dimensions)


# --- tokens --------------------------------------------------------------------------------------


def has_token(text: str) -> bool:
    """Whether `text` holds a matrix token (a label without one gets `label_suffix`)."""
    return TOKEN.search(text) is not None


def check_tokens(ctx: Context, matrix: Matrix, node: MapNode) -> None:
    """Every token in the step's strings, outside its `matrix` key, must fit `matrix`.

    Mapping keys are not looked at, as `substitute` leaves them alone.
    """
    for name, entry in node.entries.items():
        if name != "matrix":
            _check_node(ctx, matrix, entry.value)


def _check_node(ctx: Context, matrix: Matrix, node: Node) -> None:
    if isinstance(node, MapNode):
        for entry in node.entries.values():
            _check_node(ctx, matrix, entry.value)
    elif isinstance(node, SeqNode):
        for item in node.items:
            _check_node(ctx, matrix, item)
    elif isinstance(node.value, str):
        for match in TOKEN.finditer(node.value):
            _check_token(ctx, matrix, match, node.mark)


def _check_token(ctx: Context, matrix: Matrix, match: re.Match[str], mark: Mark) -> None:
    token, name = match.group(0), match.group(1)
    if name is None:
        if matrix.named:
            raise ctx.error(
                f"{token} does not fit this matrix: it names its dimensions, so write "
                f"{{{{matrix.NAME}}}} with NAME {_names(matrix.dimensions)}",
                mark,
            )
    elif not matrix.named:
        raise ctx.error(
            f"{token} does not fit this matrix: its dimension is unnamed ('setup' is a list), "
            "so write {{matrix}}",
            mark,
        )
    elif name not in matrix.dimensions:
        raise ctx.error(
            f"unknown matrix dimension {name!r} in {token}: expected {_names(matrix.dimensions)}",
            mark,
        )


def substitute(value: Any, job: MatrixJob) -> Any:
    """A copy of plain data with the job's values put in place of the tokens in its strings.

    Mapping keys are left alone, and so is the value of a top-level "matrix" key (the step's
    own matrix, when given a whole step). Inserted values are not scanned again, and tokens
    that do not fit the job are left as written (`check_tokens` reports them earlier).
    """
    if isinstance(value, dict):
        return {k: v if k == "matrix" else _substitute(v, job) for k, v in value.items()}
    return _substitute(value, job)


def _substitute(value: Any, job: MatrixJob) -> Any:
    if isinstance(value, str):
        return TOKEN.sub(lambda match: _replacement(match, job), value)
    if isinstance(value, list):
        return [_substitute(item, job) for item in value]
    if isinstance(value, tuple):
        return tuple(_substitute(item, job) for item in value)
    if isinstance(value, dict):
        return {key: _substitute(item, job) for key, item in value.items()}
    return value


def _replacement(match: re.Match[str], job: MatrixJob) -> str:
    name = match.group(1)
    if name is not None and not DIMENSION_NAME.fullmatch(name):
        return match.group(0)  # `{{matrix.}}` must not find the unnamed value
    return job.values.get(UNNAMED if name is None else name, match.group(0))


def label_suffix(job: MatrixJob) -> str:
    """How UIs tell a job apart when its label has no token: "(green, triangle)", "(one)"."""
    return "(" + ", ".join(job.values.values()) + ")"


__all__ = [
    "MAX_JOBS",
    "SKIP_REASON_MAX_LENGTH",
    "UNNAMED",
    "Adjustment",
    "Matrix",
    "MatrixJob",
    "check_tokens",
    "has_token",
    "label_suffix",
    "read_matrix",
    "substitute",
]
