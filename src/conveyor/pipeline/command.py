"""Command steps: `- command: make test` and friends."""

from __future__ import annotations

from conveyor.pipeline.context import Context
from conveyor.pipeline.fields import (
    collect_extra,
    pick,
    read_agents,
    read_depends_on,
    read_key,
    read_string,
    read_string_map,
)
from conveyor.pipeline.loader import MapEntry, MapNode, ScalarNode, SeqNode, describe
from conveyor.pipeline.retry import read_retry
from conveyor.pipeline.steps import CommandStep

TYPES = frozenset({"command", "script", "commands"})
"""Values of `type` that make a command step."""
KEYS = ("command", "commands", "plugins")
"""Keys that make a mapping without `type` a command step (checked first)."""

_HANDLED = {
    "type",
    "command",
    "commands",
    "label",
    "name",
    "key",
    "id",
    "identifier",
    "env",
    "agents",
    "depends_on",
    "retry",
}


def parse_command_step(ctx: Context, node: MapNode) -> CommandStep:
    entry = pick(ctx, node, "commands", "command")
    if entry is None:
        hint = " (plugins are not supported yet)" if "plugins" in node else ""
        raise ctx.error(f"this command step has no 'command'{hint}", node.mark)
    command = read_command(ctx, entry)

    label_entry = pick(ctx, node, "label", "name")
    key_entry = pick(ctx, node, "key", "id", "identifier")
    env = node.get("env")
    agents = node.get("agents")
    depends_on = node.get("depends_on")
    retry = node.get("retry")
    return CommandStep(
        command=command,
        label=(read_string(ctx, label_entry) or None) if label_entry else None,
        key=read_key(ctx, key_entry) if key_entry else None,
        env=read_string_map(ctx, env) if env else {},
        agents=read_agents(ctx, agents) if agents else {},
        depends_on=read_depends_on(ctx, depends_on) if depends_on else (),
        retry=read_retry(ctx, retry) if retry else (),
        extra=collect_extra(ctx, node, _HANDLED),
        line=node.mark.line,
    )


def read_command(ctx: Context, entry: MapEntry) -> str:
    """A string kept exactly as written, or a list of strings joined with "\\n"."""
    value = entry.value
    if isinstance(value, ScalarNode) and isinstance(value.value, str):
        command = value.value
    elif isinstance(value, SeqNode):
        lines = []
        for number, item in enumerate(value.items, start=1):
            if not (isinstance(item, ScalarNode) and isinstance(item.value, str)):
                raise ctx.error(
                    f"line {number} of {entry.key!r} must be a string, got {describe(item)}",
                    item.mark,
                )
            lines.append(item.value)
        command = "\n".join(lines)
    elif isinstance(value, ScalarNode) and value.value is None:
        command = ""
    else:
        raise ctx.error(
            f"{entry.key!r} must be a string or a list of strings, got {describe(value)}",
            value.mark,
        )
    if not command.strip():
        raise ctx.error(f"{entry.key!r} is empty", value.mark)
    return command
