"""Command steps: `- command: make test` and friends.

Also the legacy nested spellings `command: {command: ...}`, `script: {...}` and
`commands: {...}`, whose inner keys are read as if written on the step.
"""

from __future__ import annotations

from conveyor.pipeline.context import Context
from conveyor.pipeline.fields import (
    collect_step_extra,
    is_null,
    pick,
    read_agents,
    read_bool,
    read_common,
    read_int,
    read_skip,
    read_soft_fail,
    read_string,
    read_string_list,
    read_string_map,
    unnest,
)
from conveyor.pipeline.loader import MapEntry, MapNode, ScalarNode, SeqNode, describe
from conveyor.pipeline.matrix import check_tokens, read_matrix
from conveyor.pipeline.plugins import read_plugins
from conveyor.pipeline.retry import read_retry
from conveyor.pipeline.steps import CommandStep, ManualRetry

TYPES = frozenset({"command", "script", "commands"})
"""Values of `type` that make a command step."""
KEYS = ("command", "commands", "plugins", "script")
"""Keys that make a mapping without `type` a command step (checked first)."""

MAX_PARALLELISM = 1000
MAX_TIMEOUT_MINUTES = 60 * 24 * 30
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1

_HANDLED = {
    "command",
    "commands",
    "script",
    "env",
    "agents",
    "plugins",
    "parallelism",
    "matrix",
    "retry",
    "soft_fail",
    "timeout_in_minutes",
    "artifact_paths",
    "concurrency",
    "concurrency_group",
    "concurrency_method",
    "priority",
    "skip",
    "cancel_on_build_failing",
}


def parse_command_step(ctx: Context, node: MapNode) -> CommandStep:
    node = _unnest(ctx, node)
    if (e := node.get("script")) is not None and not is_null(e):
        # Only the legacy nested form `script: {command: ...}` exists (and `_unnest` has taken
        # it); anything left here would be dropped without a word.
        problem = (
            "the step's keys are nested twice ('script' and another of command/commands)"
            if isinstance(e.value, MapNode)
            else f"'script' must be a mapping of command step keys (`script: {{command: ...}}`), "
            f"got {describe(e.value)}; to run a command, write `command: ...`"
        )
        raise ctx.error(problem, e.value.mark)
    entry = pick(ctx, node, "commands", "command")
    command = read_command(ctx, entry) if entry is not None else ""
    plugins_entry = node.get("plugins")
    plugins = read_plugins(ctx, plugins_entry) if plugins_entry else ()
    if not command.strip() and not plugins:
        ctx.warn("this command step has no command, so its job does nothing", node.mark)
    elif not command.strip() and plugins_entry is not None:
        # Plugins are parsed and kept, but agents do not run them yet.
        ctx.warn(
            "this step has only plugins, which are not run yet: its job does nothing",
            plugins_entry.key_mark,
        )

    get = node.get
    retry_rules, manual = read_retry(ctx, e) if (e := get("retry")) else ((), None)
    matrix = read_matrix(ctx, e) if (e := get("matrix")) else None
    if matrix is not None:
        check_tokens(ctx, matrix, node)
    concurrency_entry = get("concurrency")
    concurrency = read_int(ctx, concurrency_entry, low=1) if concurrency_entry else None
    group = read_string(ctx, e) if (e := get("concurrency_group")) else None
    if concurrency_entry is not None and concurrency is not None and not group:
        ctx.warn(
            "'concurrency' has no effect without 'concurrency_group'", concurrency_entry.key_mark
        )
    if group and concurrency is None:
        concurrency = 1
    if (e := get("concurrency_method")) is not None and read_string(ctx, e) not in (
        None,
        "ordered",
        "eager",
    ):
        raise ctx.error("'concurrency_method' must be 'ordered' or 'eager'", e.value.mark)
    common = read_common(ctx, node)
    extra = collect_step_extra(ctx, node, _HANDLED)
    if (e := get("concurrency_method")) is not None:
        extra["concurrency_method"] = read_string(ctx, e)
    return CommandStep(
        **common,
        command=command,
        env=read_string_map(ctx, e) if (e := get("env")) else {},
        agents=read_agents(ctx, e) if (e := get("agents")) else {},
        plugins=plugins,
        parallelism=read_int(ctx, e, low=1, high=MAX_PARALLELISM)
        if (e := get("parallelism"))
        else None,
        matrix=matrix,
        retry=retry_rules,
        manual_retry=manual if manual is not None else ManualRetry(),
        soft_fail=read_soft_fail(ctx, e) if (e := get("soft_fail")) else False,
        timeout_in_minutes=read_int(ctx, e, low=1, high=MAX_TIMEOUT_MINUTES)
        if (e := get("timeout_in_minutes"))
        else None,
        artifact_paths=_artifact_paths(ctx, e) if (e := get("artifact_paths")) else (),
        concurrency=concurrency if group else None,
        concurrency_group=group or None,
        priority=(read_int(ctx, e, low=MIN_PRIORITY, high=MAX_PRIORITY) or 0)
        if (e := get("priority"))
        else 0,
        skip=read_skip(ctx, e) if (e := get("skip")) else False,
        cancel_on_build_failing=read_bool(ctx, e)
        if (e := get("cancel_on_build_failing"))
        else False,
        extra=extra,
    )


def _artifact_paths(ctx: Context, entry: MapEntry) -> tuple[str, ...]:
    # Buildkite also accepts "a;b" in one string.
    return tuple(
        part.strip()
        for text in read_string_list(ctx, entry)
        for part in text.split(";")
        if part.strip()
    )


def _unnest(ctx: Context, node: MapNode) -> MapNode:
    """`{command: {command: x, ...}}` → `{command: x, ...}`; outer keys win over inner ones."""
    nested = next(
        (
            e
            for e in (node.get(k) for k in ("command", "commands", "script"))
            if e is not None and isinstance(e.value, MapNode)
        ),
        None,
    )
    return node if nested is None else unnest(ctx, node, nested)


def read_command(ctx: Context, entry: MapEntry) -> str:
    """A string kept exactly as written, or a list of strings joined with "\\n"."""
    value = entry.value
    if isinstance(value, ScalarNode) and isinstance(value.value, str):
        return value.value
    if isinstance(value, SeqNode):
        lines = []
        for number, item in enumerate(value.items, start=1):
            if not (isinstance(item, ScalarNode) and isinstance(item.value, str)):
                raise ctx.error(
                    f"line {number} of {entry.key!r} must be a string, got {describe(item)}",
                    item.mark,
                )
            lines.append(item.value)
        return "\n".join(lines)
    if isinstance(value, ScalarNode) and value.value is None:
        return ""
    raise ctx.error(
        f"{entry.key!r} must be a string or a list of strings, got {describe(value)}",
        value.mark,
    )
