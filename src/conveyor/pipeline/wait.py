"""Wait steps: `- wait`, `- wait: ~`, `- wait: "label"`, `- type: wait`.

The older nested form `- wait: {continue_on_failure: true}` is read as if its keys were
written on the step itself.
"""

from __future__ import annotations

from conveyor.pipeline.context import Context
from conveyor.pipeline.fields import collect_step_extra, pick, read_bool, read_common, unnest
from conveyor.pipeline.loader import MapNode, ScalarNode, describe
from conveyor.pipeline.steps import WaitStep

WORDS = frozenset({"wait", "waiter"})
"""Bare strings, `type` values and keys that make a wait step."""

_HANDLED = {"wait", "waiter", "continue_on_failure"}


def parse_wait_step(ctx: Context, node: MapNode) -> WaitStep:
    wait_label: str | None = None
    wait = pick(ctx, node, "wait", "waiter")
    if wait is not None and isinstance(wait.value, MapNode):
        # `wait: {continue_on_failure: true}`: the inner mapping is the step; a `wait` inside
        # it (`wait: {wait: "label"}`) is its label.
        node = unnest(ctx, node, wait)
        wait = node.get("wait") or node.get("waiter")
    if wait is not None:
        if isinstance(wait.value, ScalarNode) and isinstance(wait.value.value, str | None):
            wait_label = wait.value.value
        else:
            raise ctx.error(
                f"{wait.key!r} must be null, a label or a mapping of options, "
                f"got {describe(wait.value)}",
                wait.value.mark,
            )
    common = read_common(ctx, node)
    if common["label"] is None:
        common["label"] = wait_label or None
    continue_on_failure = node.get("continue_on_failure")
    return WaitStep(
        **common,
        continue_on_failure=read_bool(ctx, continue_on_failure) if continue_on_failure else False,
        extra=collect_step_extra(ctx, node, _HANDLED),
    )
