"""Artifacts: files jobs upload, by path, with the address of their content."""

from __future__ import annotations

from conveyor.storage.queries.base import QueryBase


class ArtifactQueries(QueryBase):
    pass
