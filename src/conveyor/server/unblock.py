"""Unblocking block and input steps: check the field values, store them as meta-data."""

from __future__ import annotations

import re
from typing import Any

from conveyor.errors import InvalidStateError, NotFoundError, PipelineError
from conveyor.server.scheduler import advance_build
from conveyor.storage import Tx
from conveyor.storage.rows import BuildRow


async def unblock_step(tx: Tx, build_id: str, step_ref: str, values: dict[str, Any]) -> BuildRow:
    """Unblock a block or input step (by id or key) with its field values, which become
    build meta-data. Raises InvalidStateError / NotFoundError / PipelineError (bad values)."""
    await tx.lock_build(build_id)
    build = await tx.get_build(build_id)
    step = next((s for s in build.steps if step_ref in (s.id, s.key)), None)
    if step is None or step.kind not in ("block", "input"):
        raise NotFoundError(f"build #{build.number} has no block or input step {step_ref!r}")
    if step.state != "blocked":
        raise InvalidStateError(
            f"step {step.label or step_ref!r} is {step.state}, not blocked"
            + (": its dependencies have not finished" if step.state == "pending" else "")
        )
    meta = check_field_values(step.config.get("fields", []), values)
    if meta:
        await tx.set_meta_data(build_id, meta)
    await tx.update_step(step.id, config={**step.config, "unblocked_with": meta})
    await tx.set_step_state(step.id, "passed")
    return await advance_build(tx, build_id)


def check_field_values(fields: list[dict[str, Any]], values: dict[str, Any]) -> dict[str, str]:
    """Field values → meta-data; a missing required value or a bad one raises PipelineError."""
    known = {f["key"] for f in fields}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PipelineError(f"unknown field {unknown[0]!r}: expected one of {sorted(known)}")
    meta: dict[str, str] = {}
    for field in fields:
        key = field["key"]
        value = values.get(key, field.get("default"))
        if value in (None, "", [], ()):
            if field.get("required", True):
                raise PipelineError(f"field {key!r} ({field['label']}) is required")
            continue
        items = [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
        if len(items) > 1 and not field.get("multiple"):
            raise PipelineError(f"field {key!r} takes one value")
        if field["kind"] == "select":
            allowed = [o["value"] for o in field.get("options", [])]
            for item in items:
                if item not in allowed:
                    raise PipelineError(
                        f"{item!r} is not an option of field {key!r}: expected one of {allowed}"
                    )
        elif field.get("format") and not re.fullmatch(field["format"], items[0]):
            raise PipelineError(
                f"{items[0]!r} does not match the format of field {key!r} ({field['format']})"
            )
        meta[key] = "\n".join(items)
    return meta
