"""Upload-time `$VAR` interpolation of pipeline documents, as Buildkite's agent does it.

Buildkite expands environment variables in a pipeline before uploading it, so the same YAML gives
the same jobs here (see `research/pipeline-semantics.md` §6). The rules are a small subset of
shell expansion, not a shell: `$X`, `${X}`, `${X:-default}`, `${X-default}`, `${X:?message}`,
`${X?message}`, `${X:offset}` and `${X:offset:length}`. `$$` and `\\$` give a literal `$`; `\\\\`
is kept as written (so the `$` after it still expands); `$(` is left for the shell. Unset names
give "". Expanded values are never expanded again, so a value cannot smuggle in an expansion.

Defaults nest (`${A:-${B:-$C}}`), which is why this is a small recursive-descent parser over the
text rather than a regular expression: a default ends at the first `}` that is not part of an
inner expansion, so `${E:--:{}}` is the default `-:{` followed by a literal `}`.

Where we differ from Buildkite's engine on purpose:
* a `$` that cannot start an expansion (`$1`, `$ `, `$}`) is kept as text; Buildkite rejects it;
* `${X:?msg}` fails when X is unset *or empty* (bash's meaning); `${X?msg}` only when unset;
* substrings count characters, not UTF-8 bytes;
* `${X%pat}` / `${X#pat}` (newer Buildkite agents trim with them) are syntax errors here;
* two mapping keys that become the same key once expanded are an error, not a silent overwrite.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from conveyor.errors import PipelineError
from conveyor.pipeline.loader import MapEntry, MapNode, Mark, Node, ScalarNode, SeqNode, describe
from conveyor.pipeline.scalars import go_string

MAX_NESTING = 64
"""Deepest `${A:-${B:-...}}` nesting we accept; deeper would only exhaust Python's stack."""

NEVER_EXPANDED = "signature"
"""A mapping key whose value is kept byte for byte: a signature covers the text as written."""


# --- parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Expansion:
    """One `$NAME` or `${NAME<op>...}`. `word` is the default or the error message."""

    name: str
    op: str = ""  # "", ":-", "-", ":?", "?" or ":" (substring)
    word: tuple[_Part, ...] = ()
    offset: int = 0
    length: int | None = None


_Part = str | _Expansion


def _name_start(char: str) -> bool:
    # Buildkite's rule: a name starts with a Unicode letter.
    return char.isalpha()


def _name_char(char: str) -> bool:
    return char == "_" or char.isalpha() or unicodedata.category(char).startswith("N")


class _Parser:
    """Reads the whole text into parts first, so a syntax error is reported even in a default
    that would not be used."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> tuple[_Part, ...]:
        return self.word(in_braces=False, depth=0)

    def word(self, *, in_braces: bool, depth: int) -> tuple[_Part, ...]:
        """Text and expansions up to the end, or (inside braces) up to an unmatched `}`."""
        text = self.text
        parts: list[_Part] = []
        literal: list[str] = []
        while self.pos < len(text):
            char = text[self.pos]
            two = text[self.pos : self.pos + 2]
            if char == "}" and in_braces:
                break
            if two == "\\\\":  # kept as both characters, so `\\$X` still expands X
                literal.append(two)
                self.pos += 2
            elif two in ("\\$", "$$"):
                literal.append("$")
                self.pos += 2
            elif two == "$(":  # command substitution is the shell's business
                literal.append(two)
                self.pos += 2
            elif char == "$" and (two == "${" or (len(two) == 2 and _name_start(two[1]))):
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append(self.expansion(depth))
            else:
                literal.append(char)
                self.pos += 1
        if literal:
            parts.append("".join(literal))
        return tuple(parts)

    def expansion(self, depth: int) -> _Expansion:
        start = self.pos
        self.pos += 1  # the `$`
        if self.text[self.pos] != "{":
            return _Expansion(self.name())
        if depth >= MAX_NESTING:
            raise PipelineError(f"expansions are nested more than {MAX_NESTING} deep")
        self.pos += 1
        if self.pos >= len(self.text):
            raise self.unterminated(start)
        if not _name_start(self.text[self.pos]):
            raise self.error(start, "a variable name must start with a letter")
        name = self.name()
        rest = self.text[self.pos : self.pos + 2]
        if not rest:
            raise self.unterminated(start)
        if rest[0] == "}":
            self.pos += 1
            return _Expansion(name)
        op = rest if rest in (":-", ":?") else rest[0]
        self.pos += len(op)
        if op == ":":
            result = self.substring(name, start)
        elif op in (":-", "-", ":?", "?"):
            result = _Expansion(name, op, self.word(in_braces=True, depth=depth + 1))
        elif "}" not in self.text[self.pos :]:
            raise self.unterminated(start)
        else:
            raise self.error(start, f"unexpected {op!r} after the name; {_OPERATORS}")
        if self.pos >= len(self.text):
            raise self.unterminated(start)
        self.pos += 1  # the `}`
        return result

    def substring(self, name: str, start: int) -> _Expansion:
        """`${X:offset}` or `${X:offset:length}`; `${X: -7}` needs the space, else it is `:-`."""
        offset = self.number(start, "offset", stops=":}")
        length = None
        if self.text.startswith(":", self.pos):
            self.pos += 1
            length = self.number(start, "length", stops="}")
        return _Expansion(name, ":", offset=offset, length=length)

    def number(self, start: int, what: str, *, stops: str) -> int:
        begin = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stops:
            self.pos += 1
        if self.pos >= len(self.text):
            raise self.unterminated(start)
        raw = self.text[begin : self.pos].strip()
        digits = raw[1:] if raw[:1] in ("+", "-") else raw
        if not (digits.isascii() and digits.isdigit()):
            raise self.error(start, f"the substring {what} must be a whole number, got {raw!r}")
        return int(raw)

    def name(self) -> str:
        begin = self.pos
        while self.pos < len(self.text) and _name_char(self.text[self.pos]):
            self.pos += 1
        return self.text[begin : self.pos]

    def error(self, start: int, problem: str) -> PipelineError:
        end = self.text.find("}", start)
        return PipelineError(f"invalid expansion {_clip(self.text, start, end)!r}: {problem}")

    def unterminated(self, start: int) -> PipelineError:
        clip = _clip(self.text, start, len(self.text))
        return PipelineError(f"unterminated expansion {clip!r}: no closing '}}'")


_OPERATORS = "expected '}', ':-', '-', ':?', '?' or ':'"


def _clip(text: str, start: int, end: int) -> str:
    """The text of an expansion for a message: through `end` (a `}`), at most 40 characters."""
    fragment = text[start : len(text) if end < 0 else end + 1]
    return fragment if len(fragment) <= 40 else fragment[:37] + "..."


# --- evaluation ---------------------------------------------------------------------------------


def _evaluate(parts: tuple[_Part, ...], lookup: Mapping[str, str]) -> str:
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value = lookup.get(part.name)
        if part.op in (":-", "-") and (value is None or (part.op == ":-" and value == "")):
            out.append(_evaluate(part.word, lookup))
        elif part.op in (":?", "?") and (value is None or (part.op == ":?" and value == "")):
            message = _evaluate(part.word, lookup) or ("not set" if value is None else "empty")
            raise PipelineError(f"${part.name}: {message}")
        elif part.op == ":":
            out.append(_substring(value or "", part.offset, part.length))
        else:
            out.append(value or "")
    return "".join(out)


def _substring(value: str, offset: int, length: int | None) -> str:
    """Bash's `${X:offset:length}`: negative offsets count from the end, a negative length
    trims that many from the end, and anything out of range is clamped rather than an error."""
    size = len(value)
    start = min(max(offset + size if offset < 0 else offset, 0), size)
    if length is None:
        return value[start:]
    end = start + length if length >= 0 else max(size + length, start)
    return value[start : min(end, size)]


def expand(text: str, lookup: Mapping[str, str]) -> str:
    """Expand `$X`, `${X}`, `${X:-d}`, `${X-d}`, `${X:?msg}`, `${X?}`, `${X:off}`, `${X:off:len}`,
    `${X: -n}`, and the `$$` and `\\$` escapes in one string, looking names up in `lookup`.

    Raises `PipelineError(problem)` with the problem only (`$X: msg`, `$X: not set`, a syntax
    error): the caller knows which file, line and column the text came from, this function not.
    """
    if "$" not in text:
        return text  # nothing to expand, and `\\` is kept as written anyway
    return _evaluate(_Parser(text).parse(), lookup)


# --- pipeline env -------------------------------------------------------------------------------


def _bind(lookup: dict[str, str], name: str, value: str, prefer_runtime: bool) -> None:
    """Make a pipeline env entry visible to what follows it.

    By default it overrides the runtime value. With `prefer_runtime` a name that is already known
    (from the runtime, or an earlier entry) keeps its value, as Buildkite's experiment does.
    """
    if not (prefer_runtime and name in lookup):
        lookup[name] = value


def expand_env(
    env: Mapping[str, str], runtime: Mapping[str, str], *, prefer_runtime: bool = False
) -> tuple[dict[str, str], dict[str, str]]:
    """The pipeline-level `env` in document order: each key and value is expanded with what is
    known so far (the runtime env plus earlier entries), then added to the lookup, so an entry can
    use the ones above it and order matters.

    Returns (the expanded pipeline env, the lookup for the rest of the document). By default an
    entry overrides the runtime value for everything after it; with `prefer_runtime` a name that
    is already known keeps its value (Buildkite's "interpolation prefers runtime env").
    """
    lookup = dict(runtime)
    result: dict[str, str] = {}
    for key, value in env.items():
        name = expand(key, lookup)
        if name in result:
            raise PipelineError(f"env name {name!r} appears twice once variables are expanded")
        result[name] = expand(value, lookup)
        _bind(lookup, name, result[name], prefer_runtime)
    return result, lookup


# --- documents ----------------------------------------------------------------------------------


def interpolate_document(
    root: Node,
    runtime: Mapping[str, str],
    *,
    filename: str = "<pipeline>",
    prefer_runtime: bool = False,
) -> tuple[Node, dict[str, str]]:
    """A copy of a document tree from `loader.load_yaml` (a mapping with `steps`, `env`, ... or a
    bare list of steps) with every string expanded, as Buildkite does at upload time.

    The top-level `env` goes first, wherever it is written (see `expand_env`); then every string
    scalar and every mapping key elsewhere is expanded with the resulting lookup. A step's own
    `env` is expanded but feeds nothing: it is the job's environment, not the upload's. Values
    under a `signature` key are never touched. Numbers, booleans and nulls stay as they are, and
    every node keeps its mark, so later errors still point into the file as written.

    Returns (new tree, lookup). Errors are `PipelineError`s naming `filename` and the line and
    column of the scalar or key at fault.
    """
    walker = _Walker(dict(runtime), filename)
    if not isinstance(root, MapNode):
        return walker.node(root), walker.lookup
    env = root.get("env")
    new_env = walker.env(env, prefer_runtime) if env is not None else None
    entries: dict[str, MapEntry] = {}
    for entry in root.entries.values():
        walker.put(entries, new_env if entry is env and new_env else walker.entry(entry))
    return MapNode(entries, root.mark), walker.lookup


class _Walker:
    """Copies a tree with its strings expanded; every error names the node it came from."""

    def __init__(self, lookup: dict[str, str], filename: str) -> None:
        self.lookup = lookup
        self.filename = filename

    def error(self, problem: str, mark: Mark) -> PipelineError:
        return PipelineError(problem, file=self.filename, line=mark.line, column=mark.column)

    def text(self, text: str, mark: Mark) -> str:
        try:
            return expand(text, self.lookup)
        except PipelineError as exc:
            raise self.error(exc.problem, mark) from None

    def node(self, node: Node) -> Node:
        if isinstance(node, ScalarNode):
            if not isinstance(node.value, str):
                return node
            text = self.text(node.value, node.mark)
            return node if text == node.value else ScalarNode(text, node.mark)
        if isinstance(node, SeqNode):
            return SeqNode(tuple(self.node(item) for item in node.items), node.mark)
        entries: dict[str, MapEntry] = {}
        for entry in node.entries.values():
            self.put(entries, self.entry(entry))
        return MapNode(entries, node.mark)

    def entry(self, entry: MapEntry) -> MapEntry:
        if entry.key == NEVER_EXPANDED:
            return entry
        key = self.text(entry.key, entry.key_mark)
        return MapEntry(key, entry.key_mark, self.node(entry.value))

    def put(self, entries: dict[str, MapEntry], entry: MapEntry) -> None:
        """Add an expanded entry, refusing a key that another entry already expanded to."""
        first = entries.get(entry.key)
        if first is not None:
            raise self.error(
                f"key {entry.key!r} appears twice once variables are expanded "
                f"(first on line {first.key_mark.line})",
                entry.key_mark,
            )
        entries[entry.key] = entry

    def env(self, entry: MapEntry, prefer_runtime: bool) -> MapEntry:
        """The top-level env, in document order, each entry feeding the lookup for the next."""
        value = entry.value
        if isinstance(value, ScalarNode) and value.value is None:
            return entry  # `env:` with nothing: no env
        if not isinstance(value, MapNode):
            raise self.error(
                f"'env' must be a mapping of names to values, got {describe(value)}", value.mark
            )
        entries: dict[str, MapEntry] = {}
        for item in value.entries.values():
            scalar = item.value
            if not isinstance(scalar, ScalarNode):
                raise self.error(
                    f"env value {item.key!r} must be a string, number or boolean, "
                    f"got {describe(scalar)}",
                    scalar.mark,
                )
            name = self.text(item.key, item.key_mark)
            new = self.node(scalar)
            assert isinstance(new, ScalarNode)
            self.put(entries, MapEntry(name, item.key_mark, new))
            _bind(self.lookup, name, go_string(new.value), prefer_runtime)
        return MapEntry(entry.key, entry.key_mark, MapNode(entries, value.mark))


__all__ = ["MAX_NESTING", "NEVER_EXPANDED", "expand", "expand_env", "interpolate_document"]
