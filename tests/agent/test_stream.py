"""The stream loop against a server that misbehaves on purpose (tests/agent/faultserver.py),
through the real agent client over a real loopback connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from conveyor import protocol as p
from conveyor.agent import stream as stream_module
from conveyor.agent.debouncer import Action, Debouncer
from conveyor.agent.stream import StreamHealth, StreamLoop
from conveyor.client import AgentClient, new_http_client
from conveyor.errors import APIError, ConveyorError
from tests.agent.faultserver import Behaviour, FaultServer, fault_server, message, raw, status
from tests.agent.faultserver import stream as respond_stream

pytestmark = pytest.mark.anyio

TOKEN = "cva_test-token"


class WindowRecorder:
    """Stands in for `random` in the stream module: records each reconnect window (the upper
    bound of the jittered wait) and waits not at all."""

    def __init__(self) -> None:
        self.windows: list[float] = []

    def uniform(self, low: float, high: float) -> float:
        assert low == 0
        self.windows.append(high)
        return 0.0


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> WindowRecorder:
    recorder = WindowRecorder()
    monkeypatch.setattr(stream_module, "random", recorder)
    return recorder


@pytest.fixture
def short_keepalive(monkeypatch: pytest.MonkeyPatch) -> float:
    """Keepalives every 50 ms, so a stream silent for 150 ms counts as dead."""
    monkeypatch.setattr(p, "STREAM_KEEPALIVE_S", 0.05)
    return 0.05


@dataclass
class Agent:
    """What the stream loop feeds, and what it was fed."""

    health: StreamHealth = field(default_factory=StreamHealth)
    debouncer: Debouncer = field(default_factory=Debouncer)
    cancels: list[str] = field(default_factory=list)
    updates: list[p.AgentUpdate] = field(default_factory=list)
    synced: list[bool] = field(default_factory=list)

    async def until_healthy(self) -> None:
        """For the fault server: wait until the agent trusts the stream."""
        with anyio.fail_after(5):
            await self.health.wait_until(True)
        self.synced.append(self.health.healthy)

    async def note_health(self) -> None:
        self.synced.append(self.health.healthy)

    def actions(self) -> list[Action]:
        found: list[Action] = []
        while (action := self.debouncer.next_nowait()) is not None:
            found.append(action)
            if action.kind == "disconnect":
                break
        return found


@asynccontextmanager
async def serving(
    agent: Agent, script: list[Behaviour], *, stream_only: bool = False
) -> AsyncIterator[tuple[FaultServer, StreamLoop]]:
    """The fault server (script, then 401 for good) and a stream loop pointed at it. Each
    attempt notes the agent's stream health and the loop's status line as it arrives."""
    loops: list[StreamLoop] = []
    async with (
        fault_server(
            script, observe=lambda: (agent.health.healthy, loops[0].status if loops else "")
        ) as server,
        new_http_client(server.url) as http,
    ):
        loop = StreamLoop(
            AgentClient(http, TOKEN),
            agent.debouncer,
            agent.health,
            name="w1",
            stream_only=stream_only,
            on_cancel=agent.cancels.append,
            on_update=agent.updates.append,
        )
        loops.append(loop)
        yield server, loop


def health_at_attempts(server: FaultServer) -> list[bool]:
    """Whether the agent took the stream as healthy when each attempt arrived."""
    return [bool(a.seen[0]) for a in server.attempts]


def status_at_attempts(server: FaultServer) -> list[str]:
    """The stream loop's status line when each attempt arrived."""
    return [str(a.seen[1]) for a in server.attempts]


async def test_reconnect_windows_grow_to_the_cap_and_reset_after_a_good_message(
    windows: WindowRecorder,
) -> None:
    agent = Agent()
    failures = [status(503), status(500), status(429)] + [status(503)] * 6
    good = respond_stream(message("resume"), sync=agent.until_healthy)
    async with serving(agent, [*failures, good, status(502), status(503)]) as (server, loop):
        with anyio.fail_after(20):
            await loop.run()  # returns at the final 401: auto mode pings from then on
    assert windows.windows == [1, 2, 4, 8, 16, 32, 64, 64, 64, 1, 2, 4]
    assert len(server.attempts) == 13
    assert {(a.method, a.path) for a in server.attempts} == {("GET", "/agent/v1/stream")}
    assert {a.headers["authorization"] for a in server.attempts} == {f"Token {TOKEN}"}
    # Healthy from the good message until that stream ended; never while failing.
    assert agent.synced == [True]
    assert health_at_attempts(server) == [False] * 13
    assert agent.health.gave_up and not agent.health.healthy


async def test_keepalives_keep_the_stream_healthy_and_reset_the_window(
    windows: WindowRecorder, short_keepalive: float
) -> None:
    """Keepalives alone, each within the read timeout, for longer than the read timeout."""
    agent = Agent()
    keepalives = [message("keepalive")] * 8  # 8, 50 ms apart: longer than the 150 ms timeout
    script = [
        status(503),
        status(503),
        respond_stream(*keepalives, every=short_keepalive, sync=agent.note_health),
    ]
    async with serving(agent, script) as (server, loop):
        with anyio.fail_after(20):
            await loop.run()
    assert agent.synced == [True]  # still healthy after all of them
    assert len(server.attempts) == 4  # no reconnect in between
    assert windows.windows == [1, 2, 1]  # reset by the keepalives
    assert agent.actions() == []  # keepalives are no action


# Each fault comes after a good start: `job_assigned` j1 arrives, the agent takes the stream
# as healthy, then the stream fails in its own way.
FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "server ends the stream": ({"end": "close"}, "the server closed the stream"),
    "connection cut mid-chunk": ({"end": "cut"}, "RemoteProtocolError"),
    "garbage line": (
        {"tail": b"<html>502 Bad Gateway</html>\n", "end": "silent"},
        "ValidationError",
    ),
    "unknown message type": (
        {"tail": message("self_destruct"), "end": "silent"},
        "ValidationError",
    ),
    "invalid json fields": (
        {"tail": b'{"type": "job_assigned", "job": 7}\n', "end": "silent"},
        "ValidationError",
    ),
    "not utf-8": ({"tail": b"\xff\xfe\x00\x81\n", "end": "silent"}, "ValidationError"),
    "silent past the read timeout": ({"end": "silent"}, "ReadTimeout"),
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_failing_stream_turns_unhealthy_and_reconnects(
    fault: str, windows: WindowRecorder, short_keepalive: float
) -> None:
    agent = Agent()
    behaviour, problem = FAULTS[fault]
    failing = respond_stream(
        message("resume"),
        message("job_assigned", job={"id": "j1"}),
        sync=agent.until_healthy,
        **behaviour,
    )
    async with serving(agent, [failing, status(503)]) as (server, loop):
        with anyio.fail_after(20):
            await loop.run()
    assert agent.synced == [True]
    # Unhealthy when it came back (to the 503), and still when refused for good (401).
    assert health_at_attempts(server) == [False, False, False]
    reconnecting = status_at_attempts(server)[1]
    assert reconnecting.startswith("reconnecting in") and problem in reconnecting
    assert agent.actions() == [Action("job", "j1")]  # what came before the fault counts
    # The good messages reset the window; the fault and the 503 grew it again.
    assert windows.windows == [1, 2]
    assert loop.status.startswith("refused")


async def test_messages_reach_the_debouncer_and_callbacks(windows: WindowRecorder) -> None:
    agent = Agent()
    messages = [
        message("resume"),
        message("job_assigned", job={"id": "j1"}),
        message("cancel_job", job={"id": "j0"}),
        message("update", update={"spawn": 3}),
        message("keepalive"),
        message("pause"),
        message("job_assigned", job={"id": "j2"}),
        message("job_assigned", job={"id": "j1"}),  # offered again while queued: once
    ]
    async with serving(agent, [respond_stream(*messages)]) as (_, loop):
        with anyio.fail_after(20):
            await loop.run()
    assert agent.cancels == ["j0"]
    assert agent.updates == [p.AgentUpdate(spawn=3)]
    assert agent.actions() == [Action("pause")]  # the jobs are held while paused
    agent.debouncer.resume()
    assert agent.actions() == [Action("resume"), Action("job", "j1"), Action("job", "j2")]


async def test_a_disconnect_message_is_the_next_action(windows: WindowRecorder) -> None:
    agent = Agent()
    messages = [
        message("resume"),
        message("job_assigned", job={"id": "j1"}),
        message("disconnect", reason="by an operator"),
        message("resume"),
    ]
    async with serving(agent, [respond_stream(*messages)]) as (_, loop):
        with anyio.fail_after(20):
            await loop.run()
    assert agent.actions() == [Action("disconnect")]


@pytest.mark.parametrize("refusal", [401, 403, 404])
async def test_a_refused_stream_gives_up_in_auto_mode(
    refusal: int, windows: WindowRecorder
) -> None:
    agent = Agent()
    waiting_for_health = anyio.Event()
    async with serving(agent, [status(refusal, "no such token")]) as (server, loop):
        with anyio.fail_after(20):
            await loop.run()  # returns: the ping loop serves from now on
    assert len(server.attempts) == 1  # never asked again
    assert windows.windows == []
    assert agent.health.gave_up and not agent.health.healthy
    assert loop.status.startswith("refused") and "no such token" in loop.status
    # Who waits for a healthy stream waits for ever (until cancelled); unhealthy is at once.
    with anyio.fail_after(5):
        await agent.health.wait_until(False)
    async with anyio.create_task_group() as tg:

        async def wait_healthy() -> None:
            await agent.health.wait_until(True)
            waiting_for_health.set()

        tg.start_soon(wait_healthy)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert not waiting_for_health.is_set()


async def test_a_refused_stream_is_a_clear_error_in_stream_only_mode(
    windows: WindowRecorder,
) -> None:
    agent = Agent()
    async with serving(agent, [status(503)], stream_only=True) as (server, loop):
        with anyio.fail_after(20), pytest.raises(ConveyorError) as caught:
            await loop.run()
    # A 503 is worth retrying; the 401 that follows is final.
    assert len(server.attempts) == 2
    assert windows.windows == [1]
    assert not isinstance(caught.value, APIError)
    text = str(caught.value)
    assert "refused the stream" in text and "401" in text and "unknown token" in text
    assert agent.health.gave_up


async def test_an_undecodable_stream_body_is_a_reconnect(windows: WindowRecorder) -> None:
    agent = Agent()
    body = b"this is not gzip\n"
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    escaped: list[httpx.DecodingError] = []
    async with serving(agent, [raw(head, body)]) as (server, loop):
        with anyio.fail_after(20):
            try:
                await loop.run()
            except httpx.DecodingError as exc:
                escaped.append(exc)  # re-raised below, outside the fault server's task group
    if escaped:
        raise escaped[0]
    assert len(server.attempts) == 2
    assert windows.windows == [1]
