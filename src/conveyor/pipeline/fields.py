"""Readers for the values steps share: strings, booleans, env, agents, depends_on, key.

Each takes the `MapEntry` it reads and raises a `PipelineError` pointing at the offending node.
"""

from __future__ import annotations

import re
from typing import Any

from conveyor.pipeline.context import Context
from conveyor.pipeline.loader import MapEntry, MapNode, ScalarNode, SeqNode, describe, to_plain
from conveyor.pipeline.scalars import go_string

KEY_CHARACTERS = re.compile(r"[A-Za-z0-9_:/.\-]+")
KEY_MAX_LENGTH = 100
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def pick(ctx: Context, node: MapNode, canonical: str, *aliases: str) -> MapEntry | None:
    """The entry for `canonical`, else for the first alias present.

    Other spellings that are also present are ignored, with a warning.
    """
    present = [e for e in (node.get(name) for name in (canonical, *aliases)) if e is not None]
    if not present:
        return None
    chosen = present[0]
    for other in present[1:]:
        ctx.warn(f"{other.key!r} is ignored because {chosen.key!r} is set", other.key_mark)
    return chosen


def is_null(entry: MapEntry | None) -> bool:
    return entry is None or (isinstance(entry.value, ScalarNode) and entry.value.value is None)


def read_string(ctx: Context, entry: MapEntry) -> str | None:
    """A string; null gives None. Numbers and booleans are refused: quote them."""
    value = entry.value
    if isinstance(value, ScalarNode) and (value.value is None or isinstance(value.value, str)):
        return value.value
    raise ctx.error(f"{entry.key!r} must be a string, got {describe(value)}", value.mark)


def read_bool(ctx: Context, entry: MapEntry) -> bool:
    """`true` or `false`; null gives False."""
    value = entry.value
    if isinstance(value, ScalarNode) and value.value is None:
        return False
    if isinstance(value, ScalarNode) and isinstance(value.value, bool):
        return value.value
    raise ctx.error(f"{entry.key!r} must be true or false, got {describe(value)}", value.mark)


def read_string_map(ctx: Context, entry: MapEntry) -> dict[str, str]:
    """A mapping of names to scalars (formatted the Go way, see `scalars`); null gives {}."""
    if is_null(entry):
        return {}
    value = entry.value
    if not isinstance(value, MapNode):
        raise ctx.error(
            f"{entry.key!r} must be a mapping of names to values, got {describe(value)}",
            value.mark,
        )
    result: dict[str, str] = {}
    for name, item in value.entries.items():
        if not isinstance(item.value, ScalarNode):
            raise ctx.error(
                f"{entry.key} value {name!r} must be a string, number or boolean, "
                f"got {describe(item.value)}",
                item.value.mark,
            )
        result[name] = go_string(item.value.value)
    return result


def read_agents(ctx: Context, entry: MapEntry) -> dict[str, str]:
    """Agent tags: a mapping, or a list of "name=value" strings; null gives {}."""
    value = entry.value
    if not isinstance(value, SeqNode):
        return read_string_map(ctx, entry)
    result: dict[str, str] = {}
    for item in value.items:
        text = item.value if isinstance(item, ScalarNode) else None
        if not isinstance(text, str) or "=" not in text or text.startswith("="):
            raise ctx.error(
                f'each item of {entry.key!r} must be a string like "queue=linux", '
                f"got {_shown(item)}",
                item.mark,
            )
        name, _, tag = text.partition("=")
        result[name] = tag
    return result


def read_depends_on(ctx: Context, entry: MapEntry) -> tuple[str, ...]:
    """Step keys: a string, or a list of strings or `{step: key}` mappings; null gives ()."""
    if is_null(entry):
        return ()
    value = entry.value
    items = value.items if isinstance(value, SeqNode) else (value,)
    if not isinstance(value, SeqNode | ScalarNode) or (
        isinstance(value, ScalarNode) and not isinstance(value.value, str)
    ):
        raise ctx.error(
            f"'depends_on' must be a step key or a list of step keys, got {describe(value)}",
            value.mark,
        )
    keys: list[str] = []
    for item in items:
        if isinstance(item, MapNode) and "step" in item:
            keys.append(_dependency_mapping(ctx, item))
        elif isinstance(item, ScalarNode) and isinstance(item.value, str) and item.value.strip():
            keys.append(item.value)
        else:
            raise ctx.error(
                f"each item of 'depends_on' must be a step key, got {_shown(item)}", item.mark
            )
    return tuple(keys)


def _dependency_mapping(ctx: Context, item: MapNode) -> str:
    step = item.entries["step"]
    if not (isinstance(step.value, ScalarNode) and isinstance(step.value.value, str)):
        raise ctx.error(
            f"'step' in 'depends_on' must be a step key, got {describe(step.value)}",
            step.value.mark,
        )
    for name, extra in item.entries.items():
        if name == "allow_failure":
            if read_bool(ctx, extra):
                ctx.warn("'allow_failure' in 'depends_on' is not supported yet", extra.key_mark)
        elif name != "step":
            raise ctx.error(f"unknown key {name!r} in 'depends_on'", extra.key_mark)
    return step.value.value


def read_key(ctx: Context, entry: MapEntry) -> str | None:
    """A step key: letters, digits and `_:/.-`, at most 100 characters, not a UUID."""
    key = read_string(ctx, entry)
    if key is None:
        return None
    mark = entry.value.mark
    if not key:
        raise ctx.error(f"{entry.key!r} must not be empty", mark)
    if not KEY_CHARACTERS.fullmatch(key):
        raise ctx.error(
            f"{entry.key!r} {key!r} may contain only letters, digits and the characters _ : / . -",
            mark,
        )
    if len(key) > KEY_MAX_LENGTH:
        raise ctx.error(f"{entry.key!r} is longer than {KEY_MAX_LENGTH} characters", mark)
    if _UUID.fullmatch(key):
        raise ctx.error(f"{entry.key!r} {key!r} must not look like a UUID", mark)
    return key


def collect_extra(
    ctx: Context, node: MapNode, handled: set[str], *, what: str = "key"
) -> dict[str, Any]:
    """Every entry not in `handled`, as plain data, each with a warning."""
    extra: dict[str, Any] = {}
    for name, entry in node.entries.items():
        if name in handled:
            continue
        ctx.warn(
            f"unknown or not yet supported {what} {name!r} (kept, but ignored)", entry.key_mark
        )
        extra[name] = to_plain(entry.value)
    return extra


def _shown(node: MapNode | SeqNode | ScalarNode) -> str:
    if isinstance(node, ScalarNode) and isinstance(node.value, str):
        return repr(node.value)
    return describe(node)
