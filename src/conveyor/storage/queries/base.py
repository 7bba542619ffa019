"""What every query mixin shares: the connection of the transaction it runs in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class QueryBase:
    def __init__(self, conn: AsyncConnection, backend: str):
        self.conn = conn
        self.backend = backend
