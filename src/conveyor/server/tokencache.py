"""Tokens this replica has seen, by hash, so that a request is authenticated without a
transaction of its own.

Every request carries a token; looking it up was a transaction (begin, one SELECT, commit) in
front of every handler. The cache holds live tokens only, for `ttl` seconds after they were
read from the database (or created here). A revocation made through this replica drops the
matching entries as soon as its transaction commits, so on one server a revoked token is
refused at once, as before. Another replica sharing the same PostgreSQL learns of it when its
entry expires: there, a revoked token may still be taken for up to `ttl` seconds. Handlers do
not rely on the token alone where it matters (a job is started, fed log or finished only in the
state and by the agent the database says), so what such a token can still do is limited to
calls that a live job could make.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from conveyor.storage.queries.base import TxChanges
from conveyor.storage.rows import TokenRow

DEFAULT_TTL_S = 5.0


class TokenCache:
    def __init__(
        self, ttl: float = DEFAULT_TTL_S, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        # hash → (monotonic expiry, row); in insertion order, so expired entries are at the front.
        self._rows: OrderedDict[str, tuple[float, TokenRow]] = OrderedDict()
        self._generation = 0

    @property
    def generation(self) -> int:
        """Changes with every revocation: a lookup that began before one must not store what
        it read (it may be the row as it was before the revocation committed)."""
        return self._generation

    def get(self, digest: str) -> TokenRow | None:
        entry = self._rows.get(digest)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._rows[digest]
            return None
        return entry[1]

    def put(self, digest: str, row: TokenRow, *, generation: int) -> None:
        """Remember a live token read from the database when the read began at `generation`."""
        if generation != self._generation or self.ttl <= 0:
            return
        now = self._clock()
        self._rows.pop(digest, None)
        self._rows[digest] = (now + self.ttl, row)
        while self._rows:
            first = next(iter(self._rows.values()))
            if first[0] > now:
                break
            self._rows.popitem(last=False)

    def committed(self, changes: TxChanges) -> None:
        """A transaction committed: forget what it revoked, remember what it created."""
        if changes.revoked:
            self._generation += 1
            if changes.revoked_unknown:
                self._rows.clear()
            else:
                jobs, agents = changes.revoked_job_tokens, changes.revoked_agent_tokens
                gone = [
                    digest
                    for digest, (_, row) in self._rows.items()
                    if row.job_id in jobs or row.agent_id in agents
                ]
                for digest in gone:
                    del self._rows[digest]
        for digest, row in changes.tokens_created:
            # One created and revoked in the same transaction (in either order) is left to be
            # read from the database.
            if not (
                changes.revoked_unknown
                or row.job_id in changes.revoked_job_tokens
                or row.agent_id in changes.revoked_agent_tokens
            ):
                self.put(digest, row, generation=self._generation)

    def __len__(self) -> int:
        return len(self._rows)
