"""A pipeline document → `Pipeline`: document shape and step type inference.

The document is a mapping with `steps:` (plus optional `env:` and `agents:`), or a bare list of
steps. Step kinds are decided as Buildkite's parser does (see
`research/pipeline-semantics.md` §3): `type` when present, else the first matching key of
`command`/`commands`/`plugins`/`script`, `wait`/`waiter`, `block`/`input`/`manual`, `trigger`,
`group`. A mapping with keys of two kinds (`wait` and `command`) is refused. Keys that must be
unique across the build, and dependencies, are checked by `graph`.
"""

from __future__ import annotations

from collections.abc import Mapping

from conveyor.errors import PipelineError
from conveyor.pipeline import block, command, group, trigger, wait
from conveyor.pipeline.context import Context
from conveyor.pipeline.document import Pipeline
from conveyor.pipeline.fields import collect_extra, read_agents, read_string_map
from conveyor.pipeline.interpolate import interpolate_document
from conveyor.pipeline.loader import (
    MapNode,
    Node,
    ScalarNode,
    SeqNode,
    describe,
    load_yaml,
    to_plain,
)
from conveyor.pipeline.steps import BlockStep, Step, WaitStep

TYPES = (*sorted(command.TYPES), *sorted(wait.WORDS), *block.WORDS, "trigger", "group")
"""Every value `type` may have."""
KIND_KEYS = (*command.KEYS, *sorted(wait.WORDS), *block.WORDS, "trigger", "group")
"""The keys that decide a step's kind when it has no `type`, in the order they are checked."""
_KIND = {
    **{k: "command" for k in (*command.TYPES, *command.KEYS)},
    **{k: "wait" for k in wait.WORDS},
    **{k: "block" for k in block.WORDS},
    "trigger": "trigger",
    "group": "group",
}

_TOP_LEVEL = {"steps", "env", "agents"}
_KEPT_TOP_LEVEL = {"notify", "secrets", "priority", "image"}
_LABEL_KEYS = ("group", "label", "name", *block.WORDS, *sorted(wait.WORDS))
"""Keys whose string value names a step in messages, best first (`block: Release?`...)."""
_KEY_KEYS = ("key", "id", "identifier")


def parse_pipeline(
    text: str,
    *,
    filename: str = "<pipeline>",
    env: Mapping[str, str] | None = None,
    prefer_runtime: bool = False,
) -> Pipeline:
    """Parse pipeline YAML (or JSON). Raises `PipelineError` naming file, line and step.

    With `env` (the variables of the build or job uploading it), `$VAR`s are interpolated
    first, the pipeline's own `env:` in document order before everything else; without it the
    text is checked as written.
    """
    try:
        return _parse(text, Context(filename), env, prefer_runtime)
    except PipelineError:
        raise
    except Exception as exc:  # a bug of ours: still report it as a rejected pipeline
        raise PipelineError(
            f"could not parse the pipeline (internal error: {exc!r})", file=filename
        ) from exc


def _parse(
    text: str, ctx: Context, env: Mapping[str, str] | None, prefer_runtime: bool
) -> Pipeline:
    root = load_yaml(text, filename=ctx.filename)
    if root is not None and env is not None:
        try:
            root, _ = interpolate_document(
                root, env, filename=ctx.filename, prefer_runtime=prefer_runtime
            )
        except PipelineError as exc:
            # Interpolation sees a tree, not steps: name the step the failing text is in.
            if exc.step is None and exc.line is not None:
                where = (exc.line, exc.column or 1)
                name = _step_at(root, where)
                if name is not None:
                    raise PipelineError(
                        exc.problem, file=exc.file, line=exc.line, column=exc.column, step=name
                    ) from None
            raise
    if root is None:
        raise PipelineError(
            "the pipeline is empty: expected a mapping with 'steps' or a list of steps",
            file=ctx.filename,
            line=1,
            column=1,
        )
    if isinstance(root, SeqNode):
        return Pipeline(steps=parse_steps(ctx, root), warnings=tuple(ctx.warnings))
    if not isinstance(root, MapNode):
        raise ctx.error(
            f"a pipeline must be a mapping with 'steps' or a list of steps, got {describe(root)}",
            root.mark,
        )

    steps_entry = root.get("steps")
    steps: tuple[Step, ...] = ()
    if steps_entry is None:
        ctx.warn("the pipeline has no 'steps' key, so it has no steps", root.mark)
    elif isinstance(steps_entry.value, SeqNode):
        steps = parse_steps(ctx, steps_entry.value)
    elif not (isinstance(steps_entry.value, ScalarNode) and steps_entry.value.value is None):
        raise ctx.error(
            f"'steps' must be a list of steps, got {describe(steps_entry.value)}",
            steps_entry.value.mark,
        )
    env_entry = root.get("env")
    agents = root.get("agents")
    return Pipeline(
        steps=steps,
        env=read_string_map(ctx, env_entry) if env_entry else {},
        agents=read_agents(ctx, agents) if agents else {},
        extra={
            **collect_extra(ctx, root, _TOP_LEVEL | _KEPT_TOP_LEVEL, what="top-level key"),
            **{k: to_plain(root.entries[k].value) for k in _KEPT_TOP_LEVEL if k in root},
        },
        warnings=tuple(ctx.warnings),
    )


def parse_steps(ctx: Context, node: SeqNode, *, in_group: bool = False) -> tuple[Step, ...]:
    """Parse a list of steps (the top level, or a group's)."""
    steps: list[Step] = []
    for index, item in enumerate(node.items, start=1):
        step_ctx = ctx.for_step(step_name(item, index, group=ctx.step if in_group else None))
        steps.append(parse_step(step_ctx, item, index, in_group=in_group))
    return tuple(steps)


def parse_step(ctx: Context, node: Node, index: int, *, in_group: bool = False) -> Step:
    """One step of any kind; `index` is its 1-based position, for messages."""
    if isinstance(node, ScalarNode) and isinstance(node.value, str):
        word = node.value
        if word in wait.WORDS:
            return WaitStep(line=node.mark.line)
        if word in block.WORDS:
            kind = "input" if word == "input" else "block"
            return BlockStep(kind=kind, line=node.mark.line)
        raise ctx.error(
            f"step {index} is not a known step type: a step written as a bare string must be "
            f"'wait', 'waiter', 'block' or 'input', got {_short(word)} "
            "(to run it, write `- command: ...`)",
            node.mark,
        )
    if not isinstance(node, MapNode):
        raise ctx.error(
            f"step {index} must be a mapping or a string, got {describe(node)}", node.mark
        )

    type_entry = node.get("type")
    if type_entry is not None:
        value = type_entry.value.value if isinstance(type_entry.value, ScalarNode) else None
        if not isinstance(value, str):
            raise ctx.error(
                f"'type' must be a string, got {describe(type_entry.value)}",
                type_entry.value.mark,
            )
        word = value
        if word not in TYPES:
            raise ctx.error(
                f"step type {word!r} is not known: expected one of {', '.join(TYPES)}",
                type_entry.value.mark,
            )
        where = type_entry.value.mark
    else:
        found = next((k for k in KIND_KEYS if k in node), None)
        if found is None:
            keys = ", ".join(node.entries) or "none"
            raise ctx.error(
                f"step {index} is not a known step type: expected one of the keys "
                f"{', '.join(KIND_KEYS)} or a 'type' (found keys: {keys})",
                node.mark,
            )
        word = found
        where = node.entries[found].key_mark
    kind = _KIND[word]
    for other in KIND_KEYS:
        entry = node.get(other)
        if entry is not None and _KIND[other] != kind:
            raise ctx.error(
                f"a {kind} step cannot have {other!r}: a step is only one kind "
                f"(this one is a {kind} step because of {word!r})",
                entry.key_mark,
            )

    if kind == "command":
        return command.parse_command_step(ctx, node)
    if kind == "wait":
        return wait.parse_wait_step(ctx, node)
    if kind == "block":
        return block.parse_block_step(ctx, node, word)
    if kind == "trigger":
        return trigger.parse_trigger_step(ctx, node)
    if in_group:
        raise ctx.error("a group cannot contain another group", where)
    return group.parse_group_step(ctx, node)


def step_name(node: Node, index: int, *, group: str | None = None) -> str:
    """How messages name a step: its label (or group name, or block/input/wait title), else
    its key, else "step N" (1-based), which inside a group is "GROUP / step N"."""
    if isinstance(node, MapNode):
        for names in (_LABEL_KEYS, _KEY_KEYS):
            for name in names:
                entry = node.get(name)
                if entry and isinstance(entry.value, ScalarNode):
                    value = entry.value.value
                    if isinstance(value, str) and value.strip():
                        return value
    # Inside a group "step 2" alone would read as the pipeline's own step 2.
    return f"step {index}" if group is None else f"{group} / step {index}"


def _step_at(root: Node, where: tuple[int, int]) -> str | None:
    """The name of the step whose text holds `where` (line, column), or None when it is
    outside every step (top-level env, anchors...)."""
    steps = root if isinstance(root, SeqNode) else _entry_at(root, where, "steps")
    name: str | None = None
    while isinstance(steps, SeqNode):
        found = [
            (index, item)
            for index, item in enumerate(steps.items, start=1)
            if (item.mark.line, item.mark.column) <= where
        ]
        if not found:
            break
        index, item = found[-1]
        name = step_name(item, index, group=name)
        steps = _entry_at(item, where, "steps")  # inside a group's steps: name the inner one
    return name


def _entry_at(node: Node, where: tuple[int, int], key: str) -> Node | None:
    """`node[key]` when `where` falls in that entry of mapping `node` (document order)."""
    if not isinstance(node, MapNode):
        return None
    before = [e for e in node.entries.values() if (e.key_mark.line, e.key_mark.column) <= where]
    last = max(before, key=lambda e: (e.key_mark.line, e.key_mark.column), default=None)
    return last.value if last is not None and last.key == key else None


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:39] + "…")
