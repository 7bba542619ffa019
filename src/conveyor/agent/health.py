"""The agent's own HTTP server (`--health-check-addr`, off by default, loopback suggested).

    GET /healthz       200 "ok" while at least one worker runs, else 503
    GET /status.json   each worker's state and one line per loop (ping, stream, heartbeat)
    GET /metrics       Prometheus text: workers by state, jobs run, uptime

Agents install without the server's web stack, so this speaks HTTP/1.1 through h11 (which
httpx already brings) over an anyio listener.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import anyio
import h11
from anyio.abc import SocketStream, TaskStatus

from conveyor import __version__
from conveyor.agent.pool import AgentPool
from conveyor.config import parse_listen

log = logging.getLogger("conveyor.agent")

_MAX_REQUEST = 64 * 1024


class HealthServer:
    def __init__(self, pool: AgentPool, addr: str):
        self._pool = pool
        self._host, self._port = parse_listen(addr)
        self._started = time.monotonic()
        self.port: int | None = None

    def _routes(self) -> dict[str, Callable[[], tuple[int, str, bytes]]]:
        return {"/healthz": self._healthz, "/status.json": self._status, "/metrics": self._metrics}

    def _healthz(self) -> tuple[int, str, bytes]:
        alive = any(w.state != "stopped" for w in self._pool.workers)
        return (200, "text/plain", b"ok\n") if alive else (503, "text/plain", b"stopped\n")

    def _status(self) -> tuple[int, str, bytes]:
        body = {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "shutdown_reason": self._pool.shutdown_reason,
            "workers": {w.name: w.status() for w in self._pool.workers},
        }
        return 200, "application/json", json.dumps(body, indent=2).encode() + b"\n"

    def _metrics(self) -> tuple[int, str, bytes]:
        states: dict[str, int] = {}
        for w in self._pool.workers:
            states[w.state] = states.get(w.state, 0) + 1
        lines = [
            "# HELP conveyor_agent_workers Workers of this agent process, by state.",
            "# TYPE conveyor_agent_workers gauge",
            *(f'conveyor_agent_workers{{state="{k}"}} {v}' for k, v in sorted(states.items())),
            "# HELP conveyor_agent_jobs_total Jobs this agent process has run.",
            "# TYPE conveyor_agent_jobs_total counter",
            f"conveyor_agent_jobs_total {sum(w.jobs_run for w in self._pool.workers)}",
            "# HELP conveyor_agent_uptime_seconds Seconds since the agent process started.",
            "# TYPE conveyor_agent_uptime_seconds gauge",
            f"conveyor_agent_uptime_seconds {time.monotonic() - self._started:.1f}",
        ]
        return 200, "text/plain; version=0.0.4", ("\n".join(lines) + "\n").encode()

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=self._host, local_port=self._port)
        async with listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            log.info("health server on %s:%s", self._host, self.port)
            task_status.started(self.port)
            await listener.serve(self._handle)

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            conn = h11.Connection(h11.SERVER)
            with anyio.move_on_after(10):
                request = await self._read_request(conn, client)
                if request is None:
                    return
                route = self._routes().get(request.target.decode().split("?", 1)[0])
                if request.method != b"GET":
                    status, kind, body = 405, "text/plain", b"only GET\n"
                elif route is None:
                    status, kind, body = 404, "text/plain", b"not found\n"
                else:
                    status, kind, body = route()
                headers = [
                    ("content-type", kind),
                    ("content-length", str(len(body))),
                    ("connection", "close"),
                ]
                await client.send(conn.send(h11.Response(status_code=status, headers=headers)))
                await client.send(conn.send(h11.Data(data=body)))
                await client.send(conn.send(h11.EndOfMessage()))

    async def _read_request(self, conn: h11.Connection, client: SocketStream) -> h11.Request | None:
        received = 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return None
            if isinstance(event, h11.Request):
                return event
            if event is h11.NEED_DATA:
                try:
                    data = await client.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return None
                received += len(data)
                if received > _MAX_REQUEST:
                    return None
                conn.receive_data(data)
            else:
                return None
