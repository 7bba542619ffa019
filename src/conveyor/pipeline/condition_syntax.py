"""The syntax of `if:` expressions: tokens, the syntax tree, the parser, and the checks that
need no build (see `conditions` for the language and its evaluation).

`parse_tree(text, variables, functions)` returns the tree or raises PipelineError naming the
column; `variables` and `functions` are the names the language knows.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, TypeAlias

from conveyor.errors import PipelineError

STATES = frozenset(
    {
        "scheduled",
        "running",
        "passed",
        "failed",
        "blocked",
        "canceling",
        "canceled",
        "skipped",
        "not_run",
        "started",
        "finished",
        "failing",
    }
)
"""The literals `build.state` may be compared with."""

_MAX_DEPTH = 50
"""Nesting limit (parentheses, arrays, `!`, ternaries): far beyond any real condition, and low
enough that parsing and evaluating stay well inside Python's recursion limit."""


Value: TypeAlias = "bool | int | str | tuple[Value, ...] | None"


# --- syntax tree --------------------------------------------------------------------------------
# `pos` is a 0-based offset into the text: the token itself for leaves, `!`, `[` and `(`-calls,
# the operator for binary nodes and `?` for a ternary.


@dataclass(frozen=True)
class _Literal:
    pos: int
    value: bool | int | str | None


@dataclass(frozen=True)
class _Array:
    pos: int
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Var:
    pos: int
    name: str


@dataclass(frozen=True)
class _Call:
    pos: int
    name: str
    arg: _Node


@dataclass(frozen=True)
class _Shell:
    """`${...}` or `$NAME`: handed to the interpolation engine, only when reached."""

    pos: int
    source: str


@dataclass(frozen=True)
class _Regex:
    """A `/.../` literal. The parser only allows it right of `=~`, `!~` and `includes`."""

    pos: int
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class _Not:
    pos: int
    operand: _Node


@dataclass(frozen=True)
class _Logic:
    """`a && b && c` as one node: a long chain must not become a deep (recursive) tree."""

    pos: int
    op: Literal["&&", "||"]
    operands: tuple[_Node, ...]


@dataclass(frozen=True)
class _Compare:
    pos: int
    op: str  # == != =~ !~ includes
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _Ternary:
    pos: int
    cond: _Node
    then: _Node
    otherwise: _Node


_Node: TypeAlias = (
    _Literal | _Array | _Var | _Call | _Shell | _Regex | _Not | _Logic | _Compare | _Ternary
)


def _children(node: _Node) -> tuple[_Node, ...]:
    match node:
        case _Array(items=items):
            return items
        case _Call(arg=arg):
            return (arg,)
        case _Not(operand=operand):
            return (operand,)
        case _Logic(operands=operands):
            return operands
        case _Compare(left=left, right=right):
            return (left, right)
        case _Ternary(cond=cond, then=then, otherwise=otherwise):
            return (cond, then, otherwise)
    return ()


def _error(text: str, pos: int, problem: str) -> PipelineError:
    """`column N: problem`, 1-based; multi-line conditions (with comments) also name the line."""
    line = text.count("\n", 0, pos)
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    where = f"line {line + 1}, column {column}" if "\n" in text else f"column {column}"
    return PipelineError(f"{where}: {problem}")


# --- tokens -------------------------------------------------------------------------------------

_TokenKind: TypeAlias = Literal["str", "int", "name", "regex", "shell", "op", "end"]


@dataclass(frozen=True)
class _Token:
    kind: _TokenKind
    text: str  # operator, name, decoded string, shell source or digits
    pos: int
    pattern: re.Pattern[str] | None = None  # compiled once for a regex token

    def describe(self) -> str:
        if self.kind == "end":
            return "the end of the expression"
        if self.kind == "str":
            return f"string {self.text!r}"
        return repr(self.text)


_OPERATORS = ("==", "!=", "=~", "!~", "&&", "||", "!", "(", ")", "[", "]", ",", "?", ":")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGITS = re.compile(r"[0-9]+")
_FLAGS = re.compile(r"[A-Za-z]+")
_SPACE = re.compile(r"\s+")
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t"}
_HINTS = {"=": "'=='", "&": "'&&'", "|": "'||'"}


def _operand_expected(tokens: list[_Token]) -> bool:
    """Whether a `/` here opens a regex (it cannot be division: the language has none)."""
    if not tokens:
        return True
    last = tokens[-1]
    if last.kind == "op":
        return last.text not in (")", "]")
    return last.kind == "name" and last.text == "includes"


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while True:
        if space := _SPACE.match(text, i):
            i = space.end()
        if text.startswith("//", i):  # checked before regexes: an empty regex is never meant
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if i >= len(text):
            tokens.append(_Token("end", "", i))
            return tokens
        char = text[i]
        if char in "\"'":
            token, i = _lex_string(text, i)
        elif char == "/" and _operand_expected(tokens):
            token, i = _lex_regex(text, i)
        elif char == "$":
            token, i = _lex_shell(text, i)
        elif digits := _DIGITS.match(text, i):
            token, i = _Token("int", digits.group(), i), digits.end()
        elif name := _NAME.match(text, i):
            token, i = _Token("name", name.group(), i), name.end()
        else:
            op = next((op for op in _OPERATORS if text.startswith(op, i)), None)
            if op is None:
                hint = f"; did you mean {_HINTS[char]}?" if char in _HINTS else ""
                raise _error(text, i, f"unexpected character {char!r}{hint}")
            token, i = _Token("op", op, i), i + len(op)
        tokens.append(token)


def _lex_string(text: str, start: int) -> tuple[_Token, int]:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == quote:
            return _Token("str", "".join(out), start), i + 1
        if char == "\\" and i + 1 < len(text):
            following = text[i + 1]
            # Unknown escapes keep their backslash, so "\d+" still works as a regex string.
            out.append(_ESCAPES.get(following, "\\" + following))
            i += 2
            continue
        out.append(char)
        i += 1
    raise _error(text, start, f"unclosed string: no closing {quote}")


def _lex_regex(text: str, start: int) -> tuple[_Token, int]:
    out: list[str] = []
    i = start + 1
    while i < len(text) and text[i] not in "/\n":
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] != "\n":
            # `\/` is a slash inside the regex; any other escape belongs to the regex engine.
            out.append("/" if text[i + 1] == "/" else text[i : i + 2])
            i += 2
            continue
        out.append(text[i])
        i += 1
    if i >= len(text) or text[i] != "/":
        raise _error(text, start, "unclosed regex: no closing /")
    flags = _FLAGS.match(text, i + 1)
    letters = flags.group() if flags else ""
    if set(letters) - {"i"}:
        raise _error(text, i + 1, f"unsupported regex flags {letters!r}: only 'i' is allowed")
    source = "".join(out)
    try:
        pattern = re.compile(source, re.IGNORECASE if letters else 0)
    except re.error as exc:
        raise _error(text, start, f"invalid regex /{source}/: {exc.msg}") from None
    return _Token("regex", source, start, pattern), i + 1 + len(letters)


def _lex_shell(text: str, start: int) -> tuple[_Token, int]:
    if text.startswith("${", start):
        # The interpolation engine's rule: a `}` closes the innermost open `${`, and a bare `{`
        # is just text, so `${E:--:{}}` ends at the first `}` (the second is a stray token).
        depth, i = 0, start
        while i < len(text):
            if text.startswith(("$$", "${"), i):
                depth += text[i + 1] == "{"
                i += 2
                continue
            if text[i] == "}":
                depth -= 1
                if depth == 0:
                    return _Token("shell", text[start : i + 1], start), i + 1
            i += 1
        raise _error(text, start, "unclosed '${': no closing }")
    if name := _ENV_NAME.match(text, start + 1):
        return _Token("shell", "$" + name.group(), start), name.end()
    raise _error(text, start, "unexpected '$': use ${NAME} or $NAME")


# --- parser -------------------------------------------------------------------------------------
# Recursive descent, one method per precedence level, loosest first:
#     ternary (right-associative)  <  ||  <  &&  <  comparison (not chainable)  <  !  <  primary


_COMPARISONS = ("==", "!=", "=~", "!~", "includes")
_REGEX_OPERATORS = ("=~", "!~", "includes")


class _Parser:
    def __init__(self, text: str, variables: Collection[str], functions: Collection[str]) -> None:
        self.variables = variables
        self.functions = functions
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def error(self, pos: int, problem: str) -> PipelineError:
        return _error(self.text, pos, problem)

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def at(self, *texts: str) -> bool:
        token = self.peek()
        return token.kind in ("op", "name") and token.text in texts

    def close(self, closer: str, opener: _Token) -> None:
        token = self.take()
        if token.kind == "op" and token.text == closer:
            return
        if token.kind == "end":
            raise self.error(opener.pos, f"{opener.text!r} is never closed")
        raise self.error(token.pos, f"expected {closer!r}, found {token.describe()}")

    def parse(self) -> _Node:
        if self.peek().kind == "end":
            raise self.error(0, "the condition is empty")
        node = self.ternary()
        if (token := self.peek()).kind != "end":
            raise self.error(token.pos, f"unexpected {token.describe()} after a complete condition")
        return node

    @contextmanager
    def nested(self) -> Iterator[None]:
        """Every construct that recurses goes through here, so this bounds the depth."""
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.error(self.peek().pos, "the condition is nested too deeply")
        try:
            yield
        finally:
            self.depth -= 1

    def ternary(self) -> _Node:
        with self.nested():
            cond = self.logic("||", self.both)
            if not self.at("?"):
                return cond
            question = self.take()
            then = self.ternary()
            if not self.at(":"):
                token = self.peek()
                raise self.error(token.pos, f"expected the ':' of a '?', found {token.describe()}")
            self.take()
            return _Ternary(question.pos, cond, then, self.ternary())

    def both(self) -> _Node:
        return self.logic("&&", self.comparison)

    def logic(self, op: Literal["&&", "||"], operand: Callable[[], _Node]) -> _Node:
        operands, pos = [operand()], self.peek().pos
        while self.at(op):
            self.take()
            operands.append(operand())
        return operands[0] if len(operands) == 1 else _Logic(pos, op, tuple(operands))

    def comparison(self) -> _Node:
        left = self.unary()
        if not self.at(*_COMPARISONS):
            return left
        op = self.take()
        right: _Node
        if op.text in _REGEX_OPERATORS and (token := self.peek()).kind == "regex":
            assert token.pattern is not None
            right = _Regex(self.take().pos, token.pattern)
        else:
            right = self.unary()
        if self.at(*_COMPARISONS):
            raise self.error(self.peek().pos, "comparisons can't be chained; add parentheses")
        return _Compare(op.pos, op.text, left, right)

    def unary(self) -> _Node:
        if not self.at("!"):
            return self.primary()
        with self.nested():
            bang = self.take()
            return _Not(bang.pos, self.unary())

    def primary(self) -> _Node:
        token = self.take()
        match token.kind:
            case "str":
                return _Literal(token.pos, token.text)
            case "int":
                return _Literal(token.pos, int(token.text))
            case "shell":
                return _Shell(token.pos, token.text)
            case "regex":
                raise self.error(
                    token.pos, "a regex can only be the right side of =~, !~ or includes"
                )
            case "name":
                return self.name(token)
            case "end":
                raise self.error(token.pos, "expected a value, found the end of the expression")
        if token.text == "(":
            node = self.ternary()
            self.close(")", token)
            return node
        if token.text == "[":
            items: list[_Node] = []
            while not self.at("]"):
                items.append(self.ternary())
                if not self.at(","):
                    break
                self.take()
            self.close("]", token)
            return _Array(token.pos, tuple(items))
        raise self.error(token.pos, f"expected a value, found {token.describe()}")

    def name(self, token: _Token) -> _Node:
        name = token.text
        keywords: dict[str, bool | None] = {"true": True, "false": False, "null": None}
        if name in keywords:
            return _Literal(token.pos, keywords[name])
        if name == "includes":
            raise self.error(token.pos, "expected a value, found 'includes'")
        if self.at("("):
            opener = self.take()
            if name not in self.functions:
                raise self.error(
                    token.pos, f"unknown function {name!r}{_suggest(name, self.functions)}"
                )
            if self.at(")"):
                raise self.error(opener.pos, f"{name}() takes one argument, the variable's name")
            arg = self.ternary()
            if isinstance(arg, _Literal) and not isinstance(arg.value, str):
                raise self.error(arg.pos, f"{name}() takes a string, the variable's name")
            self.close(")", opener)
            return _Call(token.pos, name, arg)
        if name not in self.variables:
            raise self.error(
                token.pos, f"unknown variable {name!r}{_suggest(name, self.variables)}"
            )
        return _Var(token.pos, name)


def _suggest(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_states(text: str, node: _Node) -> None:
    """`build.state` is an enum: only `build.state == "<state>"` (or `!=`) may mention it.

    Buildkite enforces this so a misspelt state is an upload error rather than a step that
    silently never runs.
    """
    match node:
        case _Compare(op="==" | "!=", left=_Var(name="build.state"), right=right):
            if not (isinstance(right, _Literal) and isinstance(right.value, str)):
                raise _error(text, right.pos, "build.state must be compared with a quoted state")
            if right.value not in STATES:
                allowed = ", ".join(sorted(STATES))
                raise _error(
                    text,
                    right.pos,
                    f"unknown build state {right.value!r}; expected one of {allowed}",
                )
            return
        case _Compare(left=_Var(name="build.state"), op=op):
            raise _error(
                text, node.pos, f"build.state can only be compared with == or !=, not {op}"
            )
        case _Compare(right=_Var(name="build.state", pos=pos)):
            raise _error(text, pos, "build.state must be on the left of the comparison")
        case _Var(name="build.state", pos=pos):
            raise _error(text, pos, 'build.state can only be used as build.state == "<state>"')
    for child in _children(node):
        _check_states(text, child)


def parse_tree(text: str, variables: Collection[str], functions: Collection[str]) -> _Node:
    """The syntax tree of `text`, with `build.state` comparisons checked."""
    tree = _Parser(text, variables, functions).parse()
    _check_states(text, tree)
    return tree
