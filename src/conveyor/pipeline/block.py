"""Block and input steps: `- block: "Release?"` with optional fields to fill in.

A block step stops everything that depends on it (and every step after it, like a wait) until
someone unblocks it. An input step stops only the steps that depend on it. While nothing but
unblocking can make progress, the build is `blocked`. Field values become build meta-data under
their keys.
"""

from __future__ import annotations

import re

from conveyor.pipeline.context import Context
from conveyor.pipeline.fields import (
    collect_step_extra,
    ignore_unknown,
    is_null,
    pick,
    read_bool,
    read_common,
    read_string,
    unnest,
)
from conveyor.pipeline.loader import MapEntry, MapNode, ScalarNode, SeqNode, describe
from conveyor.pipeline.scalars import go_string
from conveyor.pipeline.steps import BlockStep, Field, Option

WORDS = ("block", "input", "manual")
"""Bare strings, `type` values and keys that make a block or input step."""
BLOCKED_STATES = ("passed", "failed", "running")
FIELD_KEY = re.compile(r"[A-Za-z0-9_\-]+")

_HANDLED = {"block", "input", "manual", "prompt", "fields", "blocked_state"}


def parse_block_step(ctx: Context, node: MapNode, kind: str) -> BlockStep:
    """`kind` is the word that made this a block step: block, input or manual."""
    kind = "input" if kind == "input" else "block"
    words = (kind, *(w for w in WORDS if w != kind))
    word = pick(ctx, node, *words)
    title: str | None = None
    if word is not None and isinstance(word.value, MapNode):
        # `block: {block: "Release?", key: ...}`: the inner mapping is the step, and its own
        # `block`/`input` (if any) is the title.
        node = unnest(ctx, node, word)
        word = next((e for e in map(node.get, words) if e is not None), None)
    if word is not None and not isinstance(word.value, MapNode):
        title = read_string(ctx, word)
    elif word is not None:
        raise ctx.error(f"{word.key!r} must be a label, got a mapping", word.value.mark)
    common = read_common(ctx, node)
    if common["label"] is None:
        common["label"] = title or None
    state = "passed"
    if (entry := node.get("blocked_state")) is not None:
        state = read_string(ctx, entry) or "passed"
        if state not in BLOCKED_STATES:
            raise ctx.error(
                f"'blocked_state' must be one of {', '.join(BLOCKED_STATES)}, got {state!r}",
                entry.value.mark,
            )
        if kind == "input":
            # The schema allows it on input steps, but an input step never blocks the build,
            # so there is no state to set: accepted, and said so.
            ctx.warn("'blocked_state' has no effect on an input step", entry.key_mark)
            state = "passed"
    prompt = node.get("prompt")
    fields = node.get("fields")
    return BlockStep(
        **common,
        kind=kind,
        prompt=read_string(ctx, prompt) if prompt else None,
        fields=read_fields(ctx, fields) if fields else (),
        blocked_state=state,
        extra=collect_step_extra(ctx, node, _HANDLED),
    )


def read_fields(ctx: Context, entry: MapEntry) -> tuple[Field, ...]:
    if is_null(entry):
        return ()
    if not isinstance(entry.value, SeqNode):
        raise ctx.error(f"'fields' must be a list, got {describe(entry.value)}", entry.value.mark)
    fields: list[Field] = []
    keys: set[str] = set()
    for item in entry.value.items:
        if not isinstance(item, MapNode):
            raise ctx.error(f"each field must be a mapping, got {describe(item)}", item.mark)
        field = _field(ctx, item)
        if field.key in keys:  # allowed: the later value overwrites the earlier one
            ctx.warn(
                f"two fields have the key {field.key!r}; the last one's value is kept", item.mark
            )
        keys.add(field.key)
        fields.append(field)
    return tuple(fields)


def _field(ctx: Context, node: MapNode) -> Field:
    if "text" in node and "select" in node:
        raise ctx.error(
            "a field has either 'text' or 'select' (its label), not both",
            node.entries["select"].key_mark,
        )
    # The label is optional (the schema requires only `key`): without one, a field with
    # `options` is a select field and any other a text field, labelled by its key.
    kind = "select" if "select" in node or ("options" in node and "text" not in node) else "text"
    key_entry = node.get("key")
    if key_entry is None:
        raise ctx.error(f"this {kind} field has no 'key'", node.mark)
    key = read_string(ctx, key_entry) or ""
    if not FIELD_KEY.fullmatch(key):
        raise ctx.error(
            f"field key {key!r} may contain only letters, digits, '_' and '-'",
            key_entry.value.mark,
        )
    handled = {kind, "key", "hint", "required", "default"}
    options: tuple[Option, ...] = ()
    multiple = False
    fmt: str | None = None
    if kind == "select":
        handled |= {"options", "multiple"}
        options = _options(ctx, node)
        multiple = read_bool(ctx, e) if (e := node.get("multiple")) else False
    else:
        handled.add("format")
        if (e := node.get("format")) is not None:
            fmt = read_string(ctx, e)
            try:
                re.compile(fmt or "")
            except re.error as exc:
                raise ctx.error(
                    f"'format' is not a valid regular expression: {exc}", e.value.mark
                ) from None
    default_entry = node.get("default")
    default = _default(ctx, default_entry, multiple)
    if default is not None and options:
        assert default_entry is not None
        values = {o.value for o in options}
        for value in (default,) if isinstance(default, str) else default:
            if value not in values:
                raise ctx.error(
                    f"default {value!r} is not one of the options "
                    f"({', '.join(repr(o.value) for o in options)})",
                    default_entry.value.mark,
                )
    ignore_unknown(ctx, node, handled, where="a field")
    return Field(
        kind=kind,
        key=key,
        label=(read_string(ctx, e) if (e := node.get(kind)) else None) or key,
        hint=read_string(ctx, e) if (e := node.get("hint")) else None,
        required=read_bool(ctx, e) if (e := node.get("required")) and not is_null(e) else True,
        default=default,
        options=options,
        multiple=multiple,
        format=fmt,
    )


def _options(ctx: Context, node: MapNode) -> tuple[Option, ...]:
    entry = node.get("options")
    if entry is None or not isinstance(entry.value, SeqNode) or not entry.value.items:
        raise ctx.error("a select field needs a non-empty list of 'options'", node.mark)
    options: list[Option] = []
    for item in entry.value.items:
        value = item.get("value") if isinstance(item, MapNode) else None
        if not isinstance(item, MapNode) or value is None:
            raise ctx.error("each option must be a mapping with 'label' and 'value'", item.mark)
        label = item.get("label")
        options.append(
            Option(
                label=go_string(label.value.value)
                if label and isinstance(label.value, ScalarNode)
                else "",
                value=go_string(value.value.value) if isinstance(value.value, ScalarNode) else "",
            )
        )
    return tuple(options)


def _default(ctx: Context, entry: MapEntry | None, multiple: bool) -> str | tuple[str, ...] | None:
    if entry is None or is_null(entry):
        return None
    value = entry.value
    if isinstance(value, ScalarNode):
        return go_string(value.value)
    if isinstance(value, SeqNode) and multiple:
        return tuple(go_string(i.value) for i in value.items if isinstance(i, ScalarNode))
    raise ctx.error(
        "'default' must be a value (a list only for a field with 'multiple: true')", value.mark
    )
