"""Trigger steps: `- trigger: deploy` creates a build of the pipeline with that slug.

The step waits for the triggered build and takes its outcome, unless `async: true`, in which
case it passes as soon as the build is created.
"""

from __future__ import annotations

from conveyor.pipeline.context import Context
from conveyor.pipeline.fields import (
    collect_step_extra,
    ignore_unknown,
    is_null,
    read_bool,
    read_common,
    read_skip,
    read_soft_fail,
    read_string,
    read_string_map,
    unnest,
)
from conveyor.pipeline.loader import MapEntry, MapNode, describe
from conveyor.pipeline.steps import TriggerBuild, TriggerStep

_HANDLED = {"trigger", "async", "build", "soft_fail", "skip"}
_BUILD_KEYS = {"message", "commit", "branch", "env", "meta_data"}


def parse_trigger_step(ctx: Context, node: MapNode) -> TriggerStep:
    entry = node.get("trigger")
    if entry is not None and isinstance(entry.value, MapNode):
        # The schema's nested form `trigger: {trigger: deploy, build: ...}`: the inner mapping
        # is the step.
        node = unnest(ctx, node, entry)
        entry = node.get("trigger")
    slug = read_string(ctx, entry) if entry is not None else None
    if not slug or not slug.strip():
        raise ctx.error(
            "this trigger step has no 'trigger': name the slug of the pipeline to build",
            entry.value.mark if entry is not None else node.mark,
        )
    get = node.get
    return TriggerStep(
        **read_common(ctx, node),
        pipeline=slug.strip(),
        is_async=read_bool(ctx, e) if (e := get("async")) else False,
        build=_build(ctx, e) if (e := get("build")) else TriggerBuild(),
        soft_fail=read_soft_fail(ctx, e) if (e := get("soft_fail")) else False,
        skip=read_skip(ctx, e) if (e := get("skip")) else False,
        extra=collect_step_extra(ctx, node, _HANDLED),
    )


def _build(ctx: Context, entry: MapEntry) -> TriggerBuild:
    if is_null(entry):
        return TriggerBuild()
    node = entry.value
    if not isinstance(node, MapNode):
        raise ctx.error(f"'build' must be a mapping, got {describe(node)}", node.mark)
    ignore_unknown(ctx, node, _BUILD_KEYS, where="'build'")
    get = node.get
    return TriggerBuild(
        message=read_string(ctx, e) if (e := get("message")) else None,
        commit=read_string(ctx, e) if (e := get("commit")) else None,
        branch=read_string(ctx, e) if (e := get("branch")) else None,
        env=read_string_map(ctx, e) if (e := get("env")) else {},
        meta_data=read_string_map(ctx, e) if (e := get("meta_data")) else {},
    )
