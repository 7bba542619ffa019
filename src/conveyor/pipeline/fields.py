"""Readers for the values steps share: strings, numbers, env, agents, depends_on, key, if...

Each takes the `MapEntry` it reads and raises a `PipelineError` pointing at the offending node.
"""

from __future__ import annotations

import re
from typing import Any

from conveyor.errors import PipelineError
from conveyor.pipeline.context import Context
from conveyor.pipeline.loader import MapEntry, MapNode, ScalarNode, SeqNode, describe, to_plain
from conveyor.pipeline.scalars import go_string
from conveyor.pipeline.steps import Dependency

SKIP_REASON_MAX = 70

KEY_CHARACTERS = re.compile(r"[A-Za-z0-9_:/.,${}\-]+")
"""What a step key may hold; `$`, `{` and `}` because a key may be written `${VAR}_build`."""
KEY_MAX_LENGTH = 100
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)

_BOOL_TEXT = {"true": True, "false": False}
"""Quoted booleans Buildkite's schema accepts wherever it takes true or false (and that a
pipeline gets from interpolation, e.g. `async: "${ASYNC}"`). Other spellings (`yes`) are refused."""


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
    """`true` or `false` (also quoted, as the schema allows); null gives False."""
    value = entry.value
    if isinstance(value, ScalarNode) and value.value is None:
        return False
    if isinstance(value, ScalarNode) and isinstance(value.value, bool):
        return value.value
    if isinstance(value, ScalarNode) and isinstance(value.value, str):
        flag = _BOOL_TEXT.get(value.value)
        if flag is not None:
            return flag
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


def read_depends_on(ctx: Context, entry: MapEntry) -> tuple[Dependency, ...]:
    """Step keys: a string, or a list of strings or `{step: key, allow_failure: bool}`."""
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
    deps: list[Dependency] = []
    for item in items:
        if isinstance(item, MapNode) and "step" in item:
            deps.append(_dependency_mapping(ctx, item))
        elif isinstance(item, ScalarNode) and isinstance(item.value, str) and item.value.strip():
            deps.append(Dependency(item.value))
        else:
            raise ctx.error(
                f"each item of 'depends_on' must be a step key, got {_shown(item)}", item.mark
            )
    return tuple(deps)


def _dependency_mapping(ctx: Context, item: MapNode) -> Dependency:
    step = item.entries["step"]
    if not (isinstance(step.value, ScalarNode) and isinstance(step.value.value, str)):
        raise ctx.error(
            f"'step' in 'depends_on' must be a step key, got {describe(step.value)}",
            step.value.mark,
        )
    allow_failure = False
    for name, extra in item.entries.items():
        if name == "allow_failure":
            allow_failure = read_bool(ctx, extra)
        elif name != "step":
            raise ctx.error(
                f"unknown key {name!r} in 'depends_on': expected 'step' and 'allow_failure'",
                extra.key_mark,
            )
    return Dependency(step.value.value, allow_failure)


def read_int(
    ctx: Context, entry: MapEntry, *, low: int | None = None, high: int | None = None
) -> int | None:
    """A whole number within [low, high]; null gives None. Strings such as "5" are refused."""
    value = entry.value
    if isinstance(value, ScalarNode) and value.value is None:
        return None
    if not (
        isinstance(value, ScalarNode)
        and isinstance(value.value, int)
        and not isinstance(value.value, bool)
    ):
        shown = repr(value.value) if isinstance(value, ScalarNode) else describe(value)
        raise ctx.error(f"{entry.key!r} must be a whole number, got {shown}", value.mark)
    number = value.value
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = (
            f"from {low} to {high}"
            if low is not None and high is not None
            else f"at least {low}"
            if low is not None
            else f"at most {high}"
        )
        raise ctx.error(f"{entry.key!r} must be {bounds}, got {number}", value.mark)
    return number


def read_string_list(ctx: Context, entry: MapEntry) -> tuple[str, ...]:
    """A string or a list of strings; null gives ()."""
    value = entry.value
    if isinstance(value, ScalarNode) and value.value is None:
        return ()
    items = value.items if isinstance(value, SeqNode) else (value,)
    result: list[str] = []
    for item in items:
        if not (isinstance(item, ScalarNode) and isinstance(item.value, str)):
            raise ctx.error(
                f"{entry.key!r} must be a string or a list of strings, got {_shown(item)}",
                item.mark,
            )
        result.append(item.value)
    return tuple(result)


def read_branches(ctx: Context, entry: MapEntry) -> tuple[str, ...]:
    """`branches: "main release-*"` or a list: space-separated patterns, `!` negates."""
    return tuple(word for text in read_string_list(ctx, entry) for word in text.split())


def read_skip(ctx: Context, entry: MapEntry) -> bool | str:
    """`skip: true` or a reason of at most 70 characters."""
    value = entry.value
    if isinstance(value, ScalarNode) and isinstance(value.value, bool | None):
        return bool(value.value)
    if isinstance(value, ScalarNode) and isinstance(value.value, str):
        if len(value.value) > SKIP_REASON_MAX:
            raise ctx.error(
                f"the 'skip' reason is longer than {SKIP_REASON_MAX} characters", value.mark
            )
        return value.value or False
    raise ctx.error(f"'skip' must be true, false or a reason, got {describe(value)}", value.mark)


def read_soft_fail(ctx: Context, entry: MapEntry) -> bool | tuple[int, ...]:
    """`soft_fail: true`, or a list of `{exit_status: N}` (`"*"` meaning any)."""
    value = entry.value
    if isinstance(value, ScalarNode) and isinstance(value.value, bool | None):
        return bool(value.value)
    if isinstance(value, ScalarNode) and isinstance(value.value, str) and value.value in _BOOL_TEXT:
        return _BOOL_TEXT[value.value]
    if not isinstance(value, SeqNode):
        raise ctx.error(
            f"'soft_fail' must be true, false or a list of {{exit_status: N}}, "
            f"got {describe(value)}",
            value.mark,
        )
    statuses: list[int] = []
    any_status = False
    for item in value.items:
        status = item.get("exit_status") if isinstance(item, MapNode) else None
        if not isinstance(item, MapNode) or status is None or len(item.entries) != 1:
            raise ctx.error(
                "each item of 'soft_fail' must be a mapping with only 'exit_status'", item.mark
            )
        raw = status.value.value if isinstance(status.value, ScalarNode) else None
        if raw == "*":
            any_status = True  # still check the other items: a typo there is still a typo
            continue
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ctx.error(
                f"'exit_status' in 'soft_fail' must be a number or \"*\", "
                f"got {_shown(status.value)}",
                status.value.mark,
            )
        statuses.append(raw)
    return True if any_status else tuple(statuses)


def read_condition(ctx: Context, entry: MapEntry) -> str | None:
    """An `if:` expression, parsed now so a bad one is an upload error naming its line."""
    from conveyor.pipeline.conditions import parse_condition

    text = read_string(ctx, entry)
    if text is None or not text.strip():
        return None
    try:
        parse_condition(text)
    except PipelineError as exc:
        raise ctx.error(f"bad 'if' expression: {exc.problem}", entry.value.mark) from None
    return text


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
            f"{entry.key!r} {key!r} may contain only letters, digits and the characters "
            "_ - : / . , $ { }",
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


def ignore_unknown(ctx: Context, node: MapNode, handled: set[str], *, where: str) -> None:
    """Warn about each entry not in `handled`, for mappings that keep no extra data."""
    for name, entry in node.entries.items():
        if name not in handled:
            ctx.warn(f"unknown key {name!r} in {where} (ignored)", entry.key_mark)


def _shown(node: MapNode | SeqNode | ScalarNode) -> str:
    if isinstance(node, ScalarNode) and isinstance(node.value, str):
        return repr(node.value)
    return describe(node)


COMMON_KEYS = frozenset(
    {
        "type",
        "label",
        "name",
        "key",
        "id",
        "identifier",
        "depends_on",
        "allow_dependency_failure",
        "if",
        "branches",
    }
)
"""Keys `read_common` handles."""

KEPT_KEYS = frozenset({"notify", "signature", "allowed_teams", "cache", "secrets"})
"""Keys every step may have that are kept as they are, without a warning."""


def read_common(ctx: Context, node: MapNode) -> dict[str, Any]:
    """The `StepBase` fields of a step, as keyword arguments."""
    label_entry = pick(ctx, node, "label", "name")
    key_entry = pick(ctx, node, "key", "id", "identifier")
    depends_on = node.get("depends_on")
    allow = node.get("allow_dependency_failure")
    condition = node.get("if")
    branches = node.get("branches")
    return {
        "label": (read_string(ctx, label_entry) or None) if label_entry else None,
        "key": read_key(ctx, key_entry) if key_entry else None,
        "depends_on": read_depends_on(ctx, depends_on) if depends_on else (),
        "allow_dependency_failure": read_bool(ctx, allow) if allow else False,
        "condition": read_condition(ctx, condition) if condition else None,
        "branches": read_branches(ctx, branches) if branches else (),
        "line": node.mark.line,
    }


def collect_step_extra(ctx: Context, node: MapNode, handled: set[str]) -> dict[str, Any]:
    """Unknown keys (with a warning each) plus the kept ones, as plain data."""
    extra = collect_extra(ctx, node, handled | COMMON_KEYS | KEPT_KEYS | {"if_changed"})
    for name in KEPT_KEYS:
        entry = node.get(name)
        if entry is not None:
            extra[name] = to_plain(entry.value)
    if_changed = node.get("if_changed")
    if if_changed is not None:
        ctx.warn("'if_changed' is kept but not applied: the step always runs", if_changed.key_mark)
        extra["if_changed"] = to_plain(if_changed.value)
    return extra


def unnest(ctx: Context, node: MapNode, nested: MapEntry) -> MapNode:
    """The older nested spellings (`{wait: {continue_on_failure: true}}`, `{command: {command:
    x}}`, `{block: {fields: ...}}`, `{trigger: {trigger: x}}`): the inner keys read as if written
    on the step. A key written outside wins over the same key inside, with a warning."""
    assert isinstance(nested.value, MapNode)
    entries = dict(nested.value.entries)
    for name, entry in node.entries.items():
        if name == nested.key:
            continue
        if name in entries:
            ctx.warn(
                f"{name!r} is set both inside and outside {nested.key!r}; using the outer one",
                entry.key_mark,
            )
        entries[name] = entry
    return MapNode(entries, node.mark)
