"""Group steps: `- group: Tests` with its own `steps:` (which may not hold another group).

The group's key stands for all its steps in `depends_on`; its `depends_on`, `if` and branch
filter apply to every step inside it. A `wait` inside a group only orders the group's steps.
"""

from __future__ import annotations

from conveyor.pipeline.context import Context
from conveyor.pipeline.fields import collect_step_extra, read_common, read_string
from conveyor.pipeline.loader import MapNode, ScalarNode, SeqNode, describe
from conveyor.pipeline.steps import GroupStep, Step

_HANDLED = {"group", "steps"}


def parse_group_step(ctx: Context, node: MapNode) -> GroupStep:
    from conveyor.pipeline.parse import parse_steps  # parse imports this module

    common = read_common(ctx, node)
    name = node.get("group")
    title = read_string(ctx, name) if name is not None else None
    if title:
        common["label"] = title  # `group:` is the name; `label:` only when it is null
    steps_entry = node.get("steps")
    if steps_entry is None:
        raise ctx.error("this group has no 'steps'", node.mark)
    value = steps_entry.value
    if isinstance(value, ScalarNode) and value.value is None:
        steps: tuple[Step, ...] = ()
    elif isinstance(value, SeqNode):
        steps = parse_steps(ctx, value, in_group=True)
    else:
        raise ctx.error(f"'steps' of a group must be a list, got {describe(value)}", value.mark)
    return GroupStep(**common, steps=steps, extra=collect_step_extra(ctx, node, _HANDLED))
