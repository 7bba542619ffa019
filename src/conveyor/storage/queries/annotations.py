"""Annotations: Markdown notes jobs attach to their build, one per context."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update

from conveyor.storage import tables as t
from conveyor.storage.queries.base import QueryBase, new_id, utcnow
from conveyor.storage.rows import AnnotationRow


class AnnotationQueries(QueryBase):
    async def annotate(
        self,
        build_id: str,
        *,
        context: str,
        style: str,
        body: str,
        append: bool,
        job_id: str | None = None,
    ) -> AnnotationRow:
        """Create the context's annotation, or replace (or with `append`, extend) its body.
        The style is the latest given. The caller holds the build's lock."""
        now = utcnow()
        where = (t.build_annotations.c.build_id == build_id) & (
            t.build_annotations.c.context == context
        )
        row = (await self.conn.execute(select(t.build_annotations).where(where))).first()
        if row is None:
            await self.conn.execute(
                t.build_annotations.insert().values(
                    id=new_id(),
                    build_id=build_id,
                    context=context,
                    style=style,
                    body=body,
                    job_id=job_id,
                    created_at=now,
                    updated_at=now,
                )
            )
        else:
            text = row.body + body if append else body
            await self.conn.execute(
                update(t.build_annotations)
                .where(where)
                .values(style=style, body=text, job_id=job_id, updated_at=now)
            )
        found = await self.get_annotation(build_id, context)
        assert found is not None
        return found

    async def get_annotation(self, build_id: str, context: str) -> AnnotationRow | None:
        row = (
            await self.conn.execute(
                select(t.build_annotations).where(
                    t.build_annotations.c.build_id == build_id,
                    t.build_annotations.c.context == context,
                )
            )
        ).first()
        return None if row is None else _row(row)

    async def list_annotations(self, build_id: str) -> list[AnnotationRow]:
        rows = await self.conn.execute(
            select(t.build_annotations)
            .where(t.build_annotations.c.build_id == build_id)
            .order_by(t.build_annotations.c.created_at, t.build_annotations.c.id)
        )
        return [_row(r) for r in rows]

    async def remove_annotation(self, build_id: str, context: str) -> bool:
        """True when there was one to remove."""
        result = await self.conn.execute(
            delete(t.build_annotations).where(
                t.build_annotations.c.build_id == build_id, t.build_annotations.c.context == context
            )
        )
        return bool(result.rowcount)


def _row(r: Any) -> AnnotationRow:
    return AnnotationRow(
        context=r.context,
        style=r.style,
        body=r.body,
        job_id=r.job_id,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )
