"""`conveyor pipeline upload`: steps a running job adds to its own build.

The steps go right after the uploading step (inside its group, if it is in one); a `wait` or
`block` after the uploading step also waits for them, and a `wait` in the upload waits for the
steps the uploading one runs beside. `depends_on` may name any step already in the build.
"""

from __future__ import annotations

from conveyor.errors import InvalidStateError, PipelineError
from conveyor.pipeline import check_graph, parse_pipeline
from conveyor.protocol import BuildState
from conveyor.server.planner import Upload, plan_steps
from conveyor.server.scheduler import advance_build, parent_group
from conveyor.storage import Tx
from conveyor.storage.rows import BuildRow, JobRow, NewStep, StepRow


async def upload_pipeline(
    tx: Tx, job: JobRow, text: str, *, filename: str, env: dict[str, str], replace: bool = False
) -> tuple[BuildRow, list[str]]:
    """`conveyor pipeline upload` from a running job: insert the steps right after its step.

    `env` is the job's environment, which the text is interpolated against. With `replace`,
    the build's steps that have not started are removed first.
    """
    await tx.lock_build(job.build_id)
    build = await tx.get_build(job.build_id)
    if BuildState(build.state).terminal or build.state == BuildState.CANCELING:
        raise InvalidStateError(f"build #{build.number} is {build.state}: nothing can be added")
    pipeline = parse_pipeline(text, filename=filename, env=env)
    if replace:
        removed = set(await tx.delete_pending_steps(build.id))
        for row in build.steps:
            if row.kind == "group" and removed & set(row.config["children"]):
                kept = [c for c in row.config["children"] if c not in removed]
                await tx.update_step(row.id, config={**row.config, "children": kept})
        build = await tx.get_build(build.id)
    steps = {s.id: s for s in build.steps}
    known = {s.key: s.id for s in build.steps if s.key}
    check_graph(pipeline, filename=filename, known=known)
    uploader = steps[job.step_id]
    planned = plan_steps(
        pipeline, filename=filename, upload=Upload(keys=known, segment=_segment(build, uploader))
    )
    group = parent_group(build, uploader)
    barrier = _next_barrier(build, uploader)
    _check_acyclic(build, planned, group=group, barrier=barrier, filename=filename)
    new_ids = await tx.insert_steps(build.id, planned, position=uploader.position + 1)
    if group is not None:  # uploaded from inside a group: the new steps belong to it
        children = [*group.config["children"], *new_ids]
        await tx.update_step(group.id, config={**group.config, "children": children})
    # A barrier after the uploader waited for the uploader's level: it now waits for the new
    # steps too.
    barrier = _next_barrier(build, uploader)
    if barrier is not None:
        await tx.update_step(barrier.id, depends_on=[*barrier.depends_on, *new_ids])
    if pipeline.env:
        # As at creation, the pipeline's env wins over what the build had.
        await tx.set_build_env(build.id, {**build.env, **pipeline.env})
    return await advance_build(tx, build.id), list(pipeline.warnings)


def _level(build: BuildRow, step: StepRow) -> list[StepRow]:
    """The steps at the same level as `step`: its group's, or the top level's."""
    parent = parent_group(build, step)
    if parent is None:
        children = {c for s in build.steps if s.kind == "group" for c in s.config["children"]}
        return [s for s in build.steps if s.id not in children]
    ids = set(parent.config["children"])
    return [s for s in build.steps if s.id in ids]


def _segment(build: BuildRow, step: StepRow) -> list[str]:
    """The steps since the last barrier before `step`, at its level, `step` included."""
    segment: list[str] = []
    for other in _level(build, step):
        if other.position > step.position:
            break
        if other.kind in ("wait", "block"):
            segment = []
        else:
            segment.append(other.id)
    return segment


def _next_barrier(build: BuildRow, step: StepRow) -> StepRow | None:
    return next(
        (
            s
            for s in _level(build, step)
            if s.position > step.position and s.kind in ("wait", "block")
        ),
        None,
    )


def _check_acyclic(
    build: BuildRow,
    planned: list[NewStep],
    *,
    group: StepRow | None,
    barrier: StepRow | None,
    filename: str,
) -> None:
    """Refuse an upload whose steps would wait for themselves: `depends_on` naming a step
    after the next `wait` (which will wait for the new steps) or the group they join."""
    new = [f"new:{i}" for i in range(len(planned))]
    edges: dict[str, list[str]] = {
        s.id: [*s.depends_on, *(s.config["children"] if s.kind == "group" else [])]
        for s in build.steps
    }
    for name, row in zip(new, planned, strict=True):
        edges[name] = [*(new[i] for i in (*row.depends_on, *row.children)), *row.depends_on_ids]
    if group is not None:
        edges[group.id] = [*edges[group.id], *new]
    if barrier is not None:
        edges[barrier.id] = [*edges[barrier.id], *new]
    done: set[str] = set()
    visiting: set[str] = set()

    def visit(node: str) -> bool:
        if node in done or node not in edges:
            return False
        if node in visiting:
            return True
        visiting.add(node)
        found = any(visit(dep) for dep in edges[node])
        visiting.discard(node)
        done.add(node)
        return found

    for name, row in zip(new, planned, strict=True):
        if visit(name):
            raise PipelineError(
                "depends_on forms a cycle with the build's steps (an uploaded step cannot "
                "depend on a step after the next wait or block, nor on its own group)",
                file=filename,
                line=row.config.get("line") or None,
                step=row.label or row.key or f"step {int(name[4:]) + 1}",
            )
