"""What every query mixin shares: the connection of the transaction it runs in, and a record of
what the transaction changed that a server keeps in memory too (see `TxChanges`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.storage.rows import TokenRow


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class TxChanges:
    """What one transaction did that in-memory state must follow once it has committed.

    The storage layer only records; whoever runs the transaction decides what to do with it
    (the server keeps a token cache, and hands runnable jobs to idle streaming agents).
    """

    tokens_created: list[tuple[str, TokenRow]] = field(default_factory=list)
    """(token hash, row) of every token created."""
    revoked_job_tokens: set[str] = field(default_factory=set)
    """Jobs whose tokens were revoked."""
    revoked_agent_tokens: set[str] = field(default_factory=set)
    """Agents whose tokens were revoked."""
    revoked_unknown: bool = False
    """Tokens were revoked in bulk, without knowing whose (a cancel)."""
    runnable: bool = False
    """A job became runnable (scheduled), went back to the queue, or ended (a concurrency
    group may have room for another)."""
    freed_agents: set[str] = field(default_factory=set)
    """Agents that hold no job any more."""
    freed_unknown: bool = False
    """Agents were freed in bulk, without knowing which (a cancel)."""

    @property
    def revoked(self) -> bool:
        return bool(self.revoked_job_tokens or self.revoked_agent_tokens or self.revoked_unknown)


class QueryBase:
    def __init__(self, conn: AsyncConnection, backend: str):
        self.conn = conn
        self.backend = backend
        self.changes = TxChanges()
