"""YAML 1.2 text → a small tree of nodes that know their line and column.

ruamel.yaml's round-trip loader does the YAML work: YAML 1.2 scalars (`yes` and `12:00:00` stay
strings, `0o52` is 42), anchors, aliases and `<<` merge keys (a key written in the mapping beats a
merged one; in a merge list the first mapping wins). Only the first `---` document is read.

We then copy its output into `ScalarNode` / `SeqNode` / `MapNode`, so the rest of the package
never touches ruamel types: values are plain `str | int | float | bool | None`, mapping keys are
strings, every node has a 1-based `Mark`, and timestamps stay the text they were written as.
Every failure is raised as a `PipelineError` naming the line and column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSet, TaggedScalar, merge_attrib
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from conveyor.errors import PipelineError
from conveyor.pipeline.scalars import Scalar, go_string

MAX_DEPTH = 200
"""Deepest nesting of collections we accept."""
MAX_NODES = 1_000_000
"""Most nodes a document may have once aliases are expanded (stops "billion laughs")."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class Mark:
    """A place in the source. Both numbers are 1-based."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class ScalarNode:
    value: Scalar
    mark: Mark


@dataclass(frozen=True, slots=True)
class SeqNode:
    items: tuple[Node, ...]
    mark: Mark


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One `key: value` pair. `key_mark` is where the key is written (or merged from)."""

    key: str
    key_mark: Mark
    value: Node


@dataclass(frozen=True, slots=True)
class MapNode:
    entries: dict[str, MapEntry]  # in document order, merged keys last
    mark: Mark

    def get(self, key: str) -> MapEntry | None:
        return self.entries.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.entries


Node = ScalarNode | SeqNode | MapNode


def to_plain(node: Node) -> Any:
    """The node as plain Python data: dict, list, str, int, float, bool or None."""
    if isinstance(node, ScalarNode):
        return node.value
    if isinstance(node, SeqNode):
        return [to_plain(item) for item in node.items]
    return {key: to_plain(entry.value) for key, entry in node.entries.items()}


def describe(node: Node) -> str:
    """What kind of value a node holds, for messages: "a mapping", "a number", "null"..."""
    if isinstance(node, MapNode):
        return "a mapping"
    if isinstance(node, SeqNode):
        return "a list"
    value = node.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


class _YAML(YAML):
    """ruamel's loader without its plug-in discovery, which globs the disk on every instance."""

    def official_plug_ins(self) -> list[str]:
        return []


def load_yaml(text: str, *, filename: str) -> Node | None:
    """Parse the first YAML document in `text`. None when there is no document at all."""
    yaml = _YAML(typ="rt", pure=True)  # a new loader each time: they keep state between loads
    yaml.Composer = _Composer
    yaml.Constructor = _Constructor
    yaml.max_depth = MAX_DEPTH
    try:
        documents = yaml.load_all(text)
        try:
            data = next(documents, _NO_DOCUMENT)
        finally:
            documents.close()
    except MarkedYAMLError as exc:
        raise _yaml_error(exc, filename) from None
    except ReaderError as exc:
        line, column = _position(text, exc.position)
        raise PipelineError(
            f"invalid YAML: {exc.reason} ({_character(exc.character)})",
            file=filename,
            line=line,
            column=column,
        ) from None
    except (YAMLError, ValueError, TypeError, RecursionError) as exc:
        raise PipelineError(f"invalid YAML: {exc}", file=filename) from None
    if data is _NO_DOCUMENT:
        return None
    root = Mark(1, 1)
    lc = getattr(data, "lc", None)
    if lc is not None and lc.line is not None:
        root = Mark(lc.line + 1, lc.col + 1)
    if _expanded_size(data, {}, set()) > MAX_NODES:
        raise PipelineError(
            f"the document has more than {MAX_NODES} values once aliases are expanded",
            file=filename,
            line=root.line,
            column=root.column,
        )
    return _Converter(filename).convert(data, root)


_NO_DOCUMENT = object()


class _Composer(Composer):
    """YAML 1.2 lets a document reuse an anchor name (the latest one counts): no warning."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False


class _Constructor(RoundTripConstructor):
    """Timestamps stay text; `<<: *a` then `<<: *b` means `<<: [*a, *b]`; no recursive aliases."""

    def construct_yaml_timestamp(self, node: Any, values: Any = None) -> Any:
        return str(node.value)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        if node in self.recursive_objects and node not in self.constructed_objects:
            # ruamel would quietly put None here.
            raise ConstructorError(
                None, None, "an alias refers to a collection that contains it", node.start_mark
            )
        return super().construct_object(node, deep=deep)

    def flatten_mapping(self, node: Any) -> Any:
        merges = [(k, v) for k, v in node.value if k.tag == _MERGE_TAG]
        if merges:
            sources: list[Any] = []
            for _, value in merges:
                sources.extend(value.value if isinstance(value, SequenceNode) else [value])
            sources = [source for source in sources if source is not node]  # merging itself
            rest = [(k, v) for k, v in node.value if k.tag != _MERGE_TAG]
            if sources:
                first_key, first_value = merges[0]
                combined = SequenceNode(
                    "tag:yaml.org,2002:seq",
                    sources,
                    start_mark=first_value.start_mark,
                    end_mark=merges[-1][1].end_mark,
                )
                index = next(i for i, (k, _) in enumerate(node.value) if k is first_key)
                rest.insert(index, (first_key, combined))
            node.value = rest
        return super().flatten_mapping(node)


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _Constructor.construct_yaml_timestamp)


def _yaml_error(exc: MarkedYAMLError, filename: str) -> PipelineError:
    mark = exc.problem_mark or exc.context_mark
    problem = str(exc.problem or exc.context or "invalid YAML").strip()
    if exc.context and exc.problem and exc.context != exc.problem:
        problem = f"{problem} ({exc.context})"
    return PipelineError(
        f"invalid YAML: {problem}",
        file=filename,
        line=mark.line + 1 if mark is not None else None,
        column=mark.column + 1 if mark is not None else None,
    )


def _character(character: Any) -> str:
    if isinstance(character, int):
        return f"character #x{character:04x}"
    return f"byte {character!r}"


def _position(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    line = before.count("\n") + 1
    return line, offset - (before.rfind("\n") + 1) + 1


def _expanded_size(value: Any, memo: dict[int, int], open_: set[int]) -> int:
    """How many values `value` holds with every alias expanded; cheap however large that is."""
    if not isinstance(value, dict | list | CommentedSet):
        return 1
    ident = id(value)
    if ident in memo:
        return memo[ident]
    if ident in open_:
        return 1  # a cycle: _Converter reports it
    open_.add(ident)
    children = value.values() if isinstance(value, dict) else value
    total = 1 + sum(_expanded_size(child, memo, open_) for child in children)
    open_.discard(ident)
    memo[ident] = total
    return total


def _mark(pair: Any, fallback: Mark) -> Mark:
    if pair is None or pair[0] is None:
        return fallback
    return Mark(int(pair[0]) + 1, int(pair[1]) + 1)


def _entry_marks(mapping: CommentedMap, key: Any, fallback: Mark) -> tuple[Mark, Mark]:
    """Where `key` and its value are written, following merge keys to where they came from."""
    data = mapping.lc.data or {}
    if key in data:
        key_mark = _mark(mapping.lc.key(key), fallback)
        return key_mark, _mark(mapping.lc.value(key), key_mark)
    for source in getattr(mapping, merge_attrib, []):
        merged = source[1] if isinstance(source, tuple) else source
        if isinstance(merged, CommentedMap) and key in merged:
            return _entry_marks(merged, key, fallback)
    return fallback, fallback


class _Converter:
    """Copies ruamel's output into nodes, refusing cycles."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.open: set[int] = set()  # ids of the collections being converted (cycle check)

    def error(self, problem: str, mark: Mark) -> PipelineError:
        return PipelineError(problem, file=self.filename, line=mark.line, column=mark.column)

    def convert(self, value: Any, mark: Mark) -> Node:
        if isinstance(value, dict | list | CommentedSet):
            if id(value) in self.open:
                raise self.error("an alias refers to a collection that contains it", mark)
            self.open.add(id(value))
            try:
                if isinstance(value, list):
                    return self.sequence(value, mark)
                return self.mapping(value, mark)
            finally:
                self.open.discard(id(value))
        return ScalarNode(self.scalar(value, mark), mark)

    def sequence(self, value: list[Any], mark: Mark) -> SeqNode:
        lc = getattr(value, "lc", None)
        items = []
        for index, item in enumerate(value):
            pair = lc.item(index) if lc is not None and lc.data and index in lc.data else None
            items.append(self.convert(item, _mark(pair, mark)))
        return SeqNode(tuple(items), mark)

    def mapping(self, value: Any, mark: Mark) -> MapNode:
        entries: dict[str, MapEntry] = {}
        pairs = ((k, None) for k in value) if isinstance(value, CommentedSet) else value.items()
        for raw_key, raw_value in pairs:
            key_mark, value_mark = mark, mark
            if isinstance(value, CommentedMap):
                key_mark, value_mark = _entry_marks(value, raw_key, mark)
            if raw_value is None and value_mark.line != key_mark.line:
                value_mark = key_mark  # `key:` with nothing after it: point at the key
            key = self.key(raw_key, key_mark)
            if key in entries:
                first = entries[key].key_mark.line
                raise self.error(f"duplicate key {key!r} (first on line {first})", key_mark)
            entries[key] = MapEntry(key, key_mark, self.convert(raw_value, value_mark))
        return MapNode(entries, mark)

    def key(self, raw: Any, mark: Mark) -> str:
        if isinstance(raw, str | int | float):
            return go_string(self.scalar(raw, mark))
        raise self.error("a mapping key must be a string, number or boolean", mark)

    def scalar(self, value: Any, mark: Mark) -> Scalar:
        if value is None:
            return None
        if isinstance(value, bool | ScalarBoolean):
            return bool(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, TaggedScalar):  # a custom tag such as `!secret x`: keep the text
            return str(value.value)
        if isinstance(value, bytes):  # !!binary, read as text the way Go does
            return value.decode("utf-8", errors="replace")
        raise self.error(f"unsupported YAML value of type {type(value).__name__}", mark)


__all__ = [
    "MapEntry",
    "MapNode",
    "Mark",
    "Node",
    "ScalarNode",
    "SeqNode",
    "describe",
    "load_yaml",
    "to_plain",
]
