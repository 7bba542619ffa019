"""A pipeline document → `Pipeline`: document shape, step type inference, key uniqueness.

The document is a mapping with `steps:` (plus optional `env:` and `agents:`), or a bare list of
steps. Step kinds are decided as Buildkite's parser does (see
`research/pipeline-semantics.md` §3): `type` when present, else the first matching key of
`command`/`commands`/`plugins`, `wait`/`waiter`, `block`/`input`/`manual`, `trigger`, `group`.
"""

from __future__ import annotations

from conveyor.errors import PipelineError
from conveyor.pipeline import command, wait
from conveyor.pipeline.context import Context
from conveyor.pipeline.document import Pipeline
from conveyor.pipeline.fields import collect_extra, read_agents, read_string_map
from conveyor.pipeline.loader import MapNode, Node, ScalarNode, SeqNode, describe, load_yaml
from conveyor.pipeline.steps import Step, WaitStep

UNSUPPORTED = ("block", "input", "manual", "trigger", "group")
"""Step kinds Buildkite has that we do not run yet, in inference order."""
TYPES = (*sorted(command.TYPES), *sorted(wait.WORDS), *UNSUPPORTED)
"""Every value `type` may have."""
KIND_KEYS = (*command.KEYS, *sorted(wait.WORDS), *UNSUPPORTED)
"""The keys that decide a step's kind when it has no `type`, in the order they are checked."""

_TOP_LEVEL = {"steps", "env", "agents"}
_LABEL_KEYS = ("label", "name")
_KEY_KEYS = ("key", "id", "identifier")


def parse_pipeline(text: str, *, filename: str = "<pipeline>") -> Pipeline:
    """Parse pipeline YAML (or JSON). Raises `PipelineError` naming file, line and step."""
    try:
        return _parse(text, Context(filename))
    except PipelineError:
        raise
    except Exception as exc:  # a bug of ours: still report it as a rejected pipeline
        raise PipelineError(
            f"could not parse the pipeline (internal error: {exc!r})", file=filename
        ) from exc


def _parse(text: str, ctx: Context) -> Pipeline:
    root = load_yaml(text, filename=ctx.filename)
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
    env = root.get("env")
    agents = root.get("agents")
    return Pipeline(
        steps=steps,
        env=read_string_map(ctx, env) if env else {},
        agents=read_agents(ctx, agents) if agents else {},
        extra=collect_extra(ctx, root, _TOP_LEVEL, what="top-level key"),
        warnings=tuple(ctx.warnings),
    )


def parse_steps(ctx: Context, node: SeqNode) -> tuple[Step, ...]:
    """Parse a list of steps, then check that no two steps share a key."""
    steps: list[Step] = []
    key_lines: dict[str, int] = {}
    for index, item in enumerate(node.items, start=1):
        step_ctx = ctx.for_step(step_name(item, index))
        step = parse_step(step_ctx, item, index)
        if step.key is not None:
            if step.key in key_lines:
                assert isinstance(item, MapNode)
                entry = next(item.entries[k] for k in _KEY_KEYS if k in item)
                raise step_ctx.error(
                    f"key {step.key!r} is already used by the step on line {key_lines[step.key]}",
                    entry.value.mark,
                )
            key_lines[step.key] = step.line
        steps.append(step)
    return tuple(steps)


def parse_step(ctx: Context, node: Node, index: int) -> Step:
    """One step of any kind; `index` is its 1-based position, for messages."""
    if isinstance(node, ScalarNode) and isinstance(node.value, str):
        word = node.value
        if word in wait.WORDS:
            return WaitStep(line=node.mark.line)
        if word in UNSUPPORTED:
            raise ctx.error(f"{word} steps are not supported yet", node.mark)
        raise ctx.error(
            f"step {index} is not a known step type: a step written as a bare string must be "
            f"'wait' or 'waiter', got {_short(word)} (to run it, write `- command: ...`)",
            node.mark,
        )
    if not isinstance(node, MapNode):
        raise ctx.error(
            f"step {index} must be a mapping or a string, got {describe(node)}", node.mark
        )

    type_entry = node.get("type")
    if type_entry is not None:
        kind = type_entry.value.value if isinstance(type_entry.value, ScalarNode) else None
        if not isinstance(kind, str):
            raise ctx.error(
                f"'type' must be a string, got {describe(type_entry.value)}",
                type_entry.value.mark,
            )
        if kind not in TYPES:
            raise ctx.error(
                f"step type {kind!r} is not known: expected one of {', '.join(TYPES)}",
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
        kind = found
        where = node.entries[found].key_mark

    if kind in command.TYPES or kind in command.KEYS:
        return command.parse_command_step(ctx, node)
    if kind in wait.WORDS:
        return wait.parse_wait_step(ctx, node)
    raise ctx.error(f"{kind} steps are not supported yet", where)


def step_name(node: Node, index: int) -> str:
    """How messages name a step: its label, else its key, else "step N" (1-based)."""
    if isinstance(node, MapNode):
        for names in (_LABEL_KEYS, _KEY_KEYS):
            for name in names:
                entry = node.get(name)
                if entry and isinstance(entry.value, ScalarNode):
                    value = entry.value.value
                    if isinstance(value, str) and value.strip():
                        return value
    return f"step {index}"


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:39] + "…")
