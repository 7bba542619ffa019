"""Wait steps: `- wait`, `- wait: ~`, `- wait: "label"`, `- type: wait`.

The older nested form `- wait: {continue_on_failure: true}` is read as if its keys were
written on the step itself.
"""

from __future__ import annotations

from conveyor.pipeline.context import Context
from conveyor.pipeline.fields import (
    collect_extra,
    pick,
    read_bool,
    read_depends_on,
    read_key,
    read_string,
)
from conveyor.pipeline.loader import MapEntry, MapNode, ScalarNode, describe
from conveyor.pipeline.steps import WaitStep

WORDS = frozenset({"wait", "waiter"})
"""Bare strings, `type` values and keys that make a wait step."""

_HANDLED = {
    "type",
    "wait",
    "waiter",
    "continue_on_failure",
    "label",
    "name",
    "key",
    "id",
    "identifier",
    "depends_on",
}


def parse_wait_step(ctx: Context, node: MapNode) -> WaitStep:
    wait_label: str | None = None
    wait = pick(ctx, node, "wait", "waiter")
    if wait is not None:
        if isinstance(wait.value, MapNode):
            node = _unnest(ctx, node, wait)
        elif isinstance(wait.value, ScalarNode) and isinstance(wait.value.value, str | None):
            wait_label = wait.value.value
        else:
            raise ctx.error(
                f"{wait.key!r} must be null, a label or a mapping of options, "
                f"got {describe(wait.value)}",
                wait.value.mark,
            )

    label_entry = pick(ctx, node, "label", "name")
    key_entry = pick(ctx, node, "key", "id", "identifier")
    continue_on_failure = node.get("continue_on_failure")
    depends_on = node.get("depends_on")
    label = read_string(ctx, label_entry) if label_entry else wait_label
    return WaitStep(
        continue_on_failure=read_bool(ctx, continue_on_failure) if continue_on_failure else False,
        key=read_key(ctx, key_entry) if key_entry else None,
        label=label or None,
        depends_on=read_depends_on(ctx, depends_on) if depends_on else (),
        extra=collect_extra(ctx, node, _HANDLED),
        line=node.mark.line,
    )


def _unnest(ctx: Context, node: MapNode, wait: MapEntry) -> MapNode:
    """`{wait: {a: 1}, b: 2}` → `{a: 1, b: 2}`; a key written outside wins over one inside."""
    assert isinstance(wait.value, MapNode)
    entries = dict(wait.value.entries)
    for name, entry in node.entries.items():
        if name == wait.key:
            continue
        if name in entries:
            ctx.warn(
                f"{name!r} is set both inside and outside {wait.key!r}; using the outer one",
                entry.key_mark,
            )
        entries[name] = entry
    return MapNode(entries, node.mark)
