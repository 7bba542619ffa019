"""Artifacts: files jobs upload, by path, with the address of their content."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from conveyor.errors import NotFoundError
from conveyor.storage import tables as t
from conveyor.storage.queries.base import QueryBase, new_id, utcnow
from conveyor.storage.rows import ArtifactRow

_COLUMNS = [*t.artifacts.c, t.steps.c.key.label("step_key")]
_FROM = t.artifacts.outerjoin(t.steps, t.steps.c.id == t.artifacts.c.step_id)


class ArtifactQueries(QueryBase):
    async def put_artifact(
        self,
        *,
        build_id: str,
        job_id: str,
        step_id: str,
        path: str,
        size: int,
        sha256: str,
        content_type: str,
    ) -> ArtifactRow:
        """Record the job's artifact at `path`; a job uploading a path again replaces what it
        uploaded there before (a retried upload), keeping the artifact's id."""
        content = {
            "size": size,
            "sha256": sha256,
            "content_type": content_type,
            "created_at": utcnow(),
        }
        insert = pg_insert if self.backend == "postgresql" else sqlite_insert
        # One statement, so two uploads of one path racing each other cannot both insert.
        await self.conn.execute(
            insert(t.artifacts)
            .values(
                id=new_id(),
                build_id=build_id,
                job_id=job_id,
                step_id=step_id,
                path=path,
                **content,
            )
            .on_conflict_do_update(index_elements=["job_id", "path"], set_=content)
        )
        row = (
            await self.conn.execute(
                select(*_COLUMNS)
                .select_from(_FROM)
                .where(t.artifacts.c.job_id == job_id, t.artifacts.c.path == path)
            )
        ).one()
        return _row(row)

    async def get_artifact(self, artifact_id: str) -> ArtifactRow:
        row = (
            await self.conn.execute(
                select(*_COLUMNS).select_from(_FROM).where(t.artifacts.c.id == artifact_id)
            )
        ).first()
        if row is None:
            raise NotFoundError(f"no artifact {artifact_id}")
        return _row(row)

    async def list_artifacts(self, build_id: str, *, step: str | None = None) -> list[ArtifactRow]:
        """A build's artifacts by path, then oldest first; `step` keeps those uploaded by the
        jobs of the step with that key (or id)."""
        query = select(*_COLUMNS).select_from(_FROM).where(t.artifacts.c.build_id == build_id)
        if step is not None:
            query = query.where(or_(t.steps.c.key == step, t.artifacts.c.step_id == step))
        found = [_row(r) for r in await self.conn.execute(query)]
        # Sorted here: PostgreSQL's collation would order paths by locale, SQLite's by bytes.
        return sorted(found, key=lambda a: (a.path, a.created_at, a.id))


def _row(r: Any) -> ArtifactRow:
    return ArtifactRow(
        id=r.id,
        build_id=r.build_id,
        job_id=r.job_id,
        step_id=r.step_id,
        step_key=r.step_key,
        path=r.path,
        size=r.size,
        sha256=r.sha256,
        content_type=r.content_type,
        created_at=r.created_at,
    )
