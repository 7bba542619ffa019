"""What every request handler needs: the store, the settings that reach agents, the notifier."""

from __future__ import annotations

from dataclasses import dataclass, field

from conveyor.server.events import Notifier
from conveyor.storage import Store


@dataclass
class ServerContext:
    store: Store
    ping_interval: int = 10
    heartbeat_interval: int = 60
    job_status_interval: int = 1
    chunk_max_size: int = 1024 * 1024
    chunk_interval: float = 1.0
    log_max_size: int = 1024**3
    external_url: str = "http://127.0.0.1:8080"
    notifier: Notifier = field(default_factory=Notifier)
