"""A step's `if:` expression, in Buildkite's conditional language.

    parse_condition(text) -> Condition            raises PipelineError("column N: ...")
    Condition.evaluate(BuildFacts(...)) -> bool   raises PipelineError on a runtime type error

Parsing is strict and evaluation is lazy. Everything that can be checked without a build is
checked at parse time, so a typo fails when the pipeline is uploaded, not months later in the
branch that finally runs: syntax, unknown variables and functions, regex literals, and the
`build.state == "<state>"` shape. `${...}` tokens are the opposite: they are expanded only when
evaluation reaches them, so `false && ${X:?} == "x"` is false even when X is unset.

Values are null (None), booleans, integers, strings and arrays (tuples). `==` is strict about
type (`1 == "1"` and `true == 1` are false). Where a boolean is needed (`&&`, `||`, `!`, `?`
and the final result) null counts as false, so an unset `build.pull_request.draft` or a ternary
that yields null reads as "no"; any other non-boolean there is an error, never truthiness.

Regexes use Python's `re` with `search` (unanchored, like Go's `MatchString`); the common
RE2 syntax behaves the same. The syntax (tokens, tree, parser) is in `condition_syntax`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import PipelineError
from conveyor.pipeline.condition_syntax import (
    STATES,
    Value,
    _Array,
    _Call,
    _Compare,
    _error,
    _Literal,
    _Logic,
    _Node,
    _Not,
    _Regex,
    _Shell,
    _Ternary,
    _Var,
    parse_tree,
)


@dataclass(frozen=True, kw_only=True)
class BuildFacts:
    """What an `if` can see. Defaults make tests short."""

    branch: str = ""
    commit: str = ""
    message: str = ""
    source: str = "api"
    tag: str | None = None
    state: str = "running"
    id: str = ""
    number: int = 0
    creator_name: str = ""
    creator_email: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    pull_request: Mapping[str, Any] | None = None  # keys id, base_branch, repository, draft, labels
    pipeline_slug: str = ""
    pipeline_id: str = ""
    pipeline_default_branch: str = ""
    pipeline_repository: str = ""


def _pull_request(key: str) -> Callable[[BuildFacts], Value]:
    """Read one pull-request field; everything is null on a build that is not for a PR."""

    def read(facts: BuildFacts) -> Value:
        raw = None if facts.pull_request is None else facts.pull_request.get(key)
        if raw is None:
            return None
        if key == "labels":
            return tuple(map(str, raw)) if isinstance(raw, list | tuple) else (str(raw),)
        if key == "draft":
            return bool(raw)
        return str(raw)  # a PR id may arrive as an int; the language compares it as a string

    return read


_VARIABLES: dict[str, Callable[[BuildFacts], Value]] = {
    "build.branch": lambda f: f.branch,
    "build.commit": lambda f: f.commit,
    "build.message": lambda f: f.message,
    "build.source": lambda f: f.source,
    "build.tag": lambda f: f.tag,
    "build.state": lambda f: f.state,
    "build.id": lambda f: f.id,
    "build.number": lambda f: f.number,
    "build.creator.name": lambda f: f.creator_name,
    "build.creator.email": lambda f: f.creator_email,
    "build.pull_request.id": _pull_request("id"),
    "build.pull_request.base_branch": _pull_request("base_branch"),
    "build.pull_request.repository": _pull_request("repository"),
    "build.pull_request.draft": _pull_request("draft"),
    "build.pull_request.labels": _pull_request("labels"),
    "pipeline.slug": lambda f: f.pipeline_slug,
    "pipeline.id": lambda f: f.pipeline_id,
    "pipeline.default_branch": lambda f: f.pipeline_default_branch,
    "pipeline.repository": lambda f: f.pipeline_repository,
}

_FUNCTIONS: dict[str, str | None] = {"build.env": None, "env": ""}
"""Function name → its value when the variable is unset (Buildkite differs between the two)."""


def parse_condition(text: str) -> Condition:
    """Parse and validate (unknown variables and functions, bad build.state comparisons, syntax).

    Raises conveyor.errors.PipelineError whose `problem` names the column, e.g.
    "column 12: unknown variable 'missing.value'".
    """
    return Condition(text, parse_tree(text, _VARIABLES, _FUNCTIONS))


# --- evaluation ---------------------------------------------------------------------------------


class Condition:
    """A parsed, validated `if`. Evaluate it once per build; it holds no per-build state."""

    __slots__ = ("_tree", "text")

    def __init__(self, text: str, tree: _Node) -> None:
        self.text = text
        self._tree = tree

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def evaluate(self, facts: BuildFacts) -> bool:
        """True if the step should run. Raises PipelineError on a type error or a non-boolean."""
        result = _Evaluation(self.text, facts).value(self._tree)
        if result is None or isinstance(result, bool):
            return bool(result)
        raise _error(
            self.text,
            self._tree.pos,
            f"the condition must be true or false, not {_describe(result)}",
        )


def _describe(value: Value) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "true" if value else "false"
        case int():
            return f"the integer {value}"
        case str():
            return f"the string {value!r}"
    return "an array"


def _equal(a: Value, b: Value) -> bool:
    """Strict equality: `true == 1` and `1 == "1"` are false, unlike Python's `==`."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


class _Evaluation:
    """One evaluation: the text (for error columns) and the facts of one build."""

    def __init__(self, text: str, facts: BuildFacts) -> None:
        self.text = text
        self.facts = facts

    def error(self, node: _Node, problem: str) -> PipelineError:
        return _error(self.text, node.pos, problem)

    def value(self, node: _Node) -> Value:
        match node:
            case _Literal(value=value):
                return value
            case _Array(items=items):
                return tuple(self.value(item) for item in items)
            case _Var(name=name):
                return _VARIABLES[name](self.facts)
            case _Call(name=name, arg=arg):
                key = self.value(arg)
                if not isinstance(key, str):
                    raise self.error(arg, f"{name}() takes a string, not {_describe(key)}")
                return self.facts.env.get(key, _FUNCTIONS[name])
            case _Shell(source=source):
                return self.expand(node, source)
            case _Not(operand=operand):
                return not self.truth(operand, "!")
            case _Logic(op="&&", operands=operands):
                return all(self.truth(operand, "&&") for operand in operands)  # short-circuits
            case _Logic(op="||", operands=operands):
                return any(self.truth(operand, "||") for operand in operands)
            case _Ternary(cond=cond, then=then, otherwise=otherwise):
                return self.value(then if self.truth(cond, "?") else otherwise)
            case _Compare():
                return self.compare(node)
        raise self.error(node, "a regex can only be the right side of =~, !~ or includes")

    def expand(self, node: _Node, source: str) -> str:
        # Imported here, not at the top: only conditions that reach a `${...}` need it.
        from conveyor.pipeline.interpolate import expand

        try:
            return expand(source, self.facts.env)
        except PipelineError as exc:
            raise self.error(node, exc.problem) from exc

    def truth(self, node: _Node, op: str) -> bool:
        """A value where a boolean is needed: null is false, anything else but a bool an error."""
        value = self.value(node)
        if value is None or isinstance(value, bool):
            return bool(value)
        raise self.error(node, f"{op} needs true, false or null, not {_describe(value)}")

    def pattern(self, node: _Node) -> re.Pattern[str]:
        """The right side of a match: a regex literal, or a string compiled as a regex."""
        if isinstance(node, _Regex):
            return node.pattern
        source = self.value(node)
        if not isinstance(source, str):
            raise self.error(node, f"expected a regex or a string, not {_describe(source)}")
        try:
            return re.compile(source)  # `re` caches compiled patterns
        except re.error as exc:
            raise self.error(node, f"invalid regex {source!r}: {exc.msg}") from None

    def compare(self, node: _Compare) -> bool:
        left = self.value(node.left)
        if node.op in ("==", "!="):
            return _equal(left, self.value(node.right)) == (node.op == "==")
        if node.op in ("=~", "!~"):
            if left is None:  # nothing matches null, so `!~` holds
                return node.op == "!~"
            if not isinstance(left, str):
                raise self.error(
                    node, f"{node.op} needs a string on the left, not {_describe(left)}"
                )
            return (self.pattern(node.right).search(left) is not None) == (node.op == "=~")
        if left is None:  # `includes`: null contains nothing
            return False
        if isinstance(left, tuple):
            if isinstance(node.right, _Regex):
                regex = node.right.pattern
                return any(isinstance(item, str) and regex.search(item) for item in left)
            right = self.value(node.right)
            return any(_equal(item, right) for item in left)
        if isinstance(left, str):
            if isinstance(node.right, _Regex):
                return node.right.pattern.search(left) is not None
            right = self.value(node.right)
            if right is None:
                return False
            if isinstance(right, str):
                return right in left
            raise self.error(node, f"includes on a string needs a string, not {_describe(right)}")
        raise self.error(node, f"includes needs an array or a string, not {_describe(left)}")


__all__ = ["STATES", "BuildFacts", "Condition", "Value", "parse_condition"]
