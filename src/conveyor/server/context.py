"""What every request handler needs: the store, the settings that reach agents, the notifier."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from conveyor import protocol as p
from conveyor.server.artifact_store import ArtifactStore
from conveyor.server.events import Notifier
from conveyor.server.jobspec import job_spec
from conveyor.server.streams import StreamHub
from conveyor.server.tokencache import DEFAULT_TTL_S, TokenCache
from conveyor.server.transactions import ServerStore
from conveyor.storage import Store


@dataclass
class ServerContext:
    # Any store given is used through a `ServerStore` on the same database, so that every
    # transaction of the server keeps its token cache and its streams in step.
    store: Store
    ping_interval: int = 10
    heartbeat_interval: int = 60
    job_status_interval: int = 1
    chunk_max_size: int = 1024 * 1024
    chunk_interval: float = 1.0
    log_max_size: int = 1024**3
    external_url: str = "http://127.0.0.1:8080"
    # Where artifact content lives; None: this server takes no artifacts (503).
    artifacts: ArtifactStore | None = None
    artifact_max_size: int = 5 * 1024**3
    # `conveyor run`: every local agent may run every step, whatever its `agents:` rules say.
    match_any_agent: bool = False
    # How long a token read from the database is taken without reading it again. Revocations
    # made through this server apply at once; those of another replica after at most this.
    token_cache_ttl: float = DEFAULT_TTL_S
    notifier: Notifier = field(default_factory=Notifier)
    # Set when the server begins to stop, so long polls answer at once instead of holding
    # up a graceful shutdown.
    stopping: anyio.Event = field(default_factory=anyio.Event)
    streams: StreamHub = field(init=False)
    tokens: TokenCache = field(init=False)
    # What an operator asked of an agent that is not on a stream here: told at its next ping.
    orders: dict[str, p.PingResponse] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = TokenCache(self.token_cache_ttl)
        store = ServerStore(self.store.db, self.tokens)
        self.store = store
        self.streams = StreamHub(
            store,
            match_any_agent=self.match_any_agent,
            make_spec=lambda tx, job, agent: job_spec(self, tx, job, agent, revoke=False),
        )
        store.hub = self.streams
