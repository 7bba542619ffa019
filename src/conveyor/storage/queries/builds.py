"""Pipelines, builds and their steps."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Update, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from conveyor.errors import InvalidStateError, NotFoundError
from conveyor.protocol import BUILD_TRANSITIONS, BuildState
from conveyor.storage import tables as t
from conveyor.storage.queries.base import QueryBase, new_id, utcnow
from conveyor.storage.queries.jobs import job_row, new_job_values
from conveyor.storage.rows import BuildRow, NewStep, PipelineRow, StepRow


def step_row(r: Any, prefix: str = "") -> StepRow:
    """A step from a result row; `prefix`: its columns are labelled `<prefix><column>`."""
    m = r._mapping
    return StepRow(
        id=m[prefix + "id"],
        build_id=m[prefix + "build_id"],
        position=m[prefix + "position"],
        key=m[prefix + "key"],
        kind=m[prefix + "kind"],
        label=m[prefix + "label"],
        config=dict(m[prefix + "config"]),
        depends_on=list(m[prefix + "depends_on"]),
        allow_dependency_failure=bool(m[prefix + "allow_dependency_failure"]),
        state=m[prefix + "state"],
    )


def _pipeline_row(r: Any) -> PipelineRow:
    return PipelineRow(
        id=r.id,
        slug=r.slug,
        name=r.name,
        repository=r.repository,
        default_branch=r.default_branch,
        steps=r.steps,
        steps_file=r.steps_file,
    )


_BUILD_COLUMNS = [
    *t.builds.c,
    t.pipelines.c.slug.label("pipeline_slug"),
    t.pipelines.c.repository.label("pipeline_repository"),
]
_BUILDS = t.builds.join(t.pipelines, t.builds.c.pipeline_id == t.pipelines.c.id)

# Hot statements, built once: building a statement anew costs about as much as running it on
# SQLite. Bound names in an UPDATE must differ from column names.
_PIPELINE_BY_SLUG = select(t.pipelines).where(t.pipelines.c.slug == bindparam("of_slug"))
_BUILD_BY_ID = (
    select(*_BUILD_COLUMNS).select_from(_BUILDS).where(t.builds.c.id == bindparam("of_build"))
)
_JOBS_OF_BUILD = (
    select(t.jobs).where(t.jobs.c.build_id == bindparam("of_build")).order_by(t.jobs.c.created_at)
)
_STEPS_OF_BUILD = (
    select(t.steps).where(t.steps.c.build_id == bindparam("of_build")).order_by(t.steps.c.position)
)
_STEP_BY_ID = select(t.steps).where(t.steps.c.id == bindparam("of_step"))
_BUILD_AND_STEP = (
    select(*_BUILD_COLUMNS, *(c.label(f"step_{c.name}") for c in t.steps.c))
    .select_from(_BUILDS.join(t.steps, t.steps.c.build_id == t.builds.c.id))
    .where(t.builds.c.id == bindparam("of_build"), t.steps.c.id == bindparam("of_step"))
)
# FOR NO KEY UPDATE: it excludes other holders as FOR UPDATE does, but not the KEY SHARE lock a
# transaction takes on the build through a foreign key (inserting steps, updating a job it
# already updated): two such transactions each waiting for the other's lock would deadlock.
_LOCK_BUILD = (
    select(t.builds.c.id)
    .where(t.builds.c.id == bindparam("of_build"))
    .with_for_update(key_share=True)
)
_SET_STEP_STATE = (
    update(t.steps).where(t.steps.c.id == bindparam("of_step")).values(state=bindparam("to_state"))
)
_MARK_STARTED = (
    update(t.builds)
    .where(t.builds.c.id == bindparam("of_build"), t.builds.c.state == BuildState.SCHEDULED.value)
    .values(state=BuildState.RUNNING.value, started_at=bindparam("at"))
)
_BUMP_NUMBER = (
    update(t.pipelines)
    .where(t.pipelines.c.id == bindparam("of_pipeline"))
    .values(next_build_number=t.pipelines.c.next_build_number + 1)
)
_NEXT_NUMBER = select(t.pipelines.c.next_build_number).where(
    t.pipelines.c.id == bindparam("of_pipeline")
)
_SHIFT_OUT = (
    update(t.steps)
    .where(t.steps.c.build_id == bindparam("of_build"), t.steps.c.position >= bindparam("at"))
    .values(position=-t.steps.c.position - 1)
)
_SHIFT_IN = (
    update(t.steps)
    .where(t.steps.c.build_id == bindparam("of_build"), t.steps.c.position < 0)
    .values(position=-t.steps.c.position - 1 + bindparam("n"))
)
_INSERT_BUILD = t.builds.insert()
_INSERT_STEPS = t.steps.insert()
_INSERT_JOBS = t.jobs.insert()


class BuildQueries(QueryBase):
    async def get_or_create_pipeline(self, slug: str) -> PipelineRow:
        r = (await self.conn.execute(_PIPELINE_BY_SLUG, {"of_slug": slug})).first()
        if r is not None:
            return _pipeline_row(r)
        # Two first builds of one pipeline may race: the loser's insert does nothing, and both
        # read the one row that won.
        insert = pg_insert if self.backend == "postgresql" else sqlite_insert
        await self.conn.execute(
            insert(t.pipelines)
            .values(
                id=new_id(),
                slug=slug,
                name=slug,
                repository="",
                default_branch="main",
                next_build_number=1,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["slug"])
        )
        r = (await self.conn.execute(_PIPELINE_BY_SLUG, {"of_slug": slug})).one()
        return _pipeline_row(r)

    async def _next_build_number(self, pipeline_id: str) -> int:
        # The UPDATE takes the row lock first, so concurrent builds of one pipeline get
        # distinct numbers on PostgreSQL; SQLite has one writer anyway.
        await self.conn.execute(_BUMP_NUMBER, {"of_pipeline": pipeline_id})
        r = (await self.conn.execute(_NEXT_NUMBER, {"of_pipeline": pipeline_id})).one()
        return int(r[0]) - 1

    async def insert_build(
        self,
        *,
        pipeline_slug: str,
        pipeline_text: str,
        steps: list[NewStep],
        branch: str,
        commit: str,
        message: str,
        env: dict[str, str],
        source: str,
        meta_data: dict[str, str] | None = None,
        parent_step_id: str | None = None,
    ) -> str:
        """Insert a build, its steps and their jobs (all pending). Returns the build id."""
        pipeline = await self.get_or_create_pipeline(pipeline_slug)
        number = await self._next_build_number(pipeline.id)
        build_id = new_id()
        now = utcnow()
        await self.conn.execute(
            _INSERT_BUILD,
            {
                "id": build_id,
                "pipeline_id": pipeline.id,
                "number": number,
                "state": "scheduled",
                "branch": branch,
                "commit": commit,
                "message": message,
                "source": source,
                "env": env,
                "pipeline_text": pipeline_text,
                "created_at": now,
                "meta_data": meta_data or {},
                "parent_step_id": parent_step_id,
            },
        )
        await self.insert_steps(build_id, steps, position=0, fresh=True)
        return build_id

    async def insert_steps(
        self, build_id: str, steps: list[NewStep], *, position: int, fresh: bool = False
    ) -> list[str]:
        """Insert steps (and their pending jobs) at `position`, moving later steps along
        (`fresh`: the build has no steps yet, nothing to move).

        Returns the new steps' ids, in order.
        """
        if not steps:
            return []
        if not fresh:
            # Two updates, because positions are unique and a single "+ n" would collide.
            await self.conn.execute(_SHIFT_OUT, {"of_build": build_id, "at": position})
            await self.conn.execute(_SHIFT_IN, {"of_build": build_id, "n": len(steps)})
        now = utcnow()
        step_ids = [new_id() for _ in steps]
        step_values: list[dict[str, Any]] = []
        job_values: list[dict[str, Any]] = []
        for offset, (step_id, step) in enumerate(zip(step_ids, steps, strict=True)):
            config = dict(step.config)
            config["allow_failure"] = [
                *config.pop("allow_failure_ids", []),
                *(step_ids[p] for p in step.allow_failure),
            ]
            if step.kind == "group":
                config["children"] = [step_ids[p] for p in step.children]
            step_values.append(
                {
                    "id": step_id,
                    "build_id": build_id,
                    "position": position + offset,
                    "key": step.key,
                    "kind": step.kind,
                    "label": step.label,
                    "config": config,
                    "depends_on": [*step.depends_on_ids, *(step_ids[p] for p in step.depends_on)],
                    "allow_dependency_failure": int(step.allow_dependency_failure),
                    "state": "pending",
                }
            )
            job_values.extend(new_job_values(build_id, step_id, job, now) for job in step.jobs)
        await self.conn.execute(_INSERT_STEPS, step_values)
        if job_values:
            await self.conn.execute(_INSERT_JOBS, job_values)
        return step_ids

    async def delete_pending_steps(self, build_id: str) -> list[str]:
        """Remove the steps nothing has started (`pipeline upload --replace`); their ids."""
        rows = await self.conn.execute(
            select(t.steps.c.id).where(t.steps.c.build_id == build_id, t.steps.c.state == "pending")
        )
        ids = [r.id for r in rows]
        if ids:
            await self.conn.execute(t.jobs.delete().where(t.jobs.c.step_id.in_(ids)))
            await self.conn.execute(t.steps.delete().where(t.steps.c.id.in_(ids)))
        return ids

    async def update_step(self, step_id: str, **values: Any) -> None:
        await self.conn.execute(update(t.steps).where(t.steps.c.id == step_id).values(**values))

    async def set_meta_data(self, build_id: str, values: dict[str, str]) -> None:
        r = (
            await self.conn.execute(select(t.builds.c.meta_data).where(t.builds.c.id == build_id))
        ).one()
        merged = {**(r.meta_data or {}), **values}
        await self.conn.execute(
            update(t.builds).where(t.builds.c.id == build_id).values(meta_data=merged)
        )

    async def set_build_env(self, build_id: str, env: dict[str, str]) -> None:
        await self.conn.execute(update(t.builds).where(t.builds.c.id == build_id).values(env=env))

    async def builds_of_step(self, step_id: str) -> list[str]:
        """Builds a trigger step created."""
        rows = await self.conn.execute(
            select(t.builds.c.id).where(t.builds.c.parent_step_id == step_id)
        )
        return [r.id for r in rows]

    async def get_step(self, step_id: str) -> StepRow:
        r = (await self.conn.execute(_STEP_BY_ID, {"of_step": step_id})).first()
        if r is None:
            raise NotFoundError(f"no step {step_id}")
        return step_row(r)

    async def get_pipeline(self, slug: str) -> PipelineRow:
        r = (await self.conn.execute(_PIPELINE_BY_SLUG, {"of_slug": slug})).first()
        if r is None:
            raise NotFoundError(f"no pipeline {slug!r}")
        return _pipeline_row(r)

    async def list_pipelines(self) -> list[PipelineRow]:
        rows = await self.conn.execute(select(t.pipelines).order_by(t.pipelines.c.slug))
        return [_pipeline_row(r) for r in rows]

    async def upsert_pipeline(self, slug: str, **values: Any) -> PipelineRow:
        """Create the pipeline, or change the given fields of the one with this slug."""
        await self.get_or_create_pipeline(slug)
        if values:
            await self.conn.execute(
                update(t.pipelines).where(t.pipelines.c.slug == slug).values(**values)
            )
        return await self.get_pipeline(slug)

    async def _build_alone(self, where: Any, params: dict[str, Any] | None = None) -> BuildRow:
        """The build's own row (with its pipeline's slug), without steps and jobs. `where` is
        a condition, or a prebuilt statement run with `params`."""
        statement = (
            where
            if params is not None
            else select(*_BUILD_COLUMNS).select_from(_BUILDS).where(where)
        )
        r = (await self.conn.execute(statement, params)).first()
        if r is None:
            raise NotFoundError("no such build")
        return _build_row(r)

    async def _build(self, where: Any, params: dict[str, Any] | None = None) -> BuildRow:
        build = await self._build_alone(where, params)
        of_build = {"of_build": build.id}
        jobs = await self.conn.execute(_JOBS_OF_BUILD, of_build)
        steps = await self.conn.execute(_STEPS_OF_BUILD, of_build)
        step_list = [step_row(s) for s in steps]
        position = {s.id: s.position for s in step_list}
        job_list = sorted(
            (job_row(j) for j in jobs), key=lambda j: (position[j.step_id], j.attempt)
        )
        return dataclasses.replace(build, jobs=job_list, steps=step_list)

    async def get_build(self, build_id: str) -> BuildRow:
        return await self._build(_BUILD_BY_ID, {"of_build": build_id})

    async def get_build_alone(self, build_id: str) -> BuildRow:
        """The build without its steps and jobs (empty lists): one small query, for callers
        that need only the build's own fields."""
        return await self._build_alone(_BUILD_BY_ID, {"of_build": build_id})

    async def get_build_and_step(self, build_id: str, step_id: str) -> tuple[BuildRow, StepRow]:
        """The build without its steps and jobs, and one of its steps: one query."""
        r = (
            await self.conn.execute(_BUILD_AND_STEP, {"of_build": build_id, "of_step": step_id})
        ).first()
        if r is None:
            raise NotFoundError(f"no step {step_id} in build {build_id}")
        return _build_row(r), step_row(r, "step_")

    async def get_build_by_number(self, pipeline_slug: str, number: int) -> BuildRow:
        try:
            return await self._build(
                (t.pipelines.c.slug == pipeline_slug) & (t.builds.c.number == number)
            )
        except NotFoundError:
            raise NotFoundError(f"no build {pipeline_slug}#{number}") from None

    async def list_builds(
        self, *, pipeline_slug: str | None = None, limit: int = 50
    ) -> list[BuildRow]:
        q = (
            select(*_BUILD_COLUMNS)
            .select_from(t.builds.join(t.pipelines, t.builds.c.pipeline_id == t.pipelines.c.id))
            .order_by(t.builds.c.created_at.desc())
            .limit(limit)
        )
        if pipeline_slug is not None:
            q = q.where(t.pipelines.c.slug == pipeline_slug)
        return [_build_row(r) for r in await self.conn.execute(q)]

    async def lock_build(self, build_id: str) -> None:
        """Hold the build's row until the transaction ends (PostgreSQL; SQLite has one writer).

        Whoever settles a build's steps takes this first, so two jobs finishing at once are
        settled one after the other, each seeing the other's result.
        """
        if self.backend == "postgresql":
            await self.conn.execute(_LOCK_BUILD, {"of_build": build_id})

    async def set_build_state(self, build_id: str, state: str, **values: Any) -> None:
        """Change the build's state, if BUILD_TRANSITIONS allows it from the current one."""
        statement = _set_build_state(BuildState(state), tuple(values))
        params = {"of_build": build_id, **{f"new_{c}": v for c, v in values.items()}}
        result = await self.conn.execute(statement, params)
        if not result.rowcount:
            current = await self.get_build(build_id)
            raise InvalidStateError(
                f"build #{current.number} cannot go from {current.state} to {state}"
            )

    async def mark_build_started(self, build_id: str, at: datetime) -> bool:
        """A job of the build started: a `scheduled` build is `running` from now. True if it
        was scheduled."""
        result = await self.conn.execute(_MARK_STARTED, {"of_build": build_id, "at": at})
        return bool(result.rowcount)

    async def set_step_state(self, step_id: str, state: str) -> None:
        await self.conn.execute(_SET_STEP_STATE, {"of_step": step_id, "to_state": state})


@lru_cache(maxsize=64)
def _set_build_state(target: BuildState, columns: tuple[str, ...]) -> Update:
    """Compare-and-set of a build's state, from every state BUILD_TRANSITIONS allows."""
    sources = [s.value for s in BuildState if target in BUILD_TRANSITIONS[s] or s == target]
    values: dict[str, Any] = {"state": target.value}
    values.update({c: bindparam(f"new_{c}") for c in columns})
    return (
        update(t.builds)
        .where(t.builds.c.id == bindparam("of_build"), t.builds.c.state.in_(sources))
        .values(values)
    )


def _build_row(r: Any, **extra: Any) -> BuildRow:
    return BuildRow(
        id=r.id,
        pipeline_id=r.pipeline_id,
        pipeline_slug=r.pipeline_slug,
        number=r.number,
        state=r.state,
        branch=r.branch,
        commit=r.commit,
        message=r.message,
        source=r.source,
        env=dict(r.env),
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        meta_data=dict(r.meta_data or {}),
        parent_step_id=r.parent_step_id,
        repository=r.pipeline_repository or "",
        **extra,
    )
