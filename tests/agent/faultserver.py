"""A fake agent-API server that exists only to misbehave on `GET /agent/v1/stream`.

It speaks just enough HTTP/1.1 over a raw loopback socket to answer each connection with one
scripted behaviour: an error status, a stream of messages that then ends cleanly, breaks off in
the middle of a chunk, turns into garbage, or goes silent. Every response says
`Connection: close`, so each stream attempt is one connection, and the server records each
attempt with what the test wants to know at that moment (e.g. the agent's stream health).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream

Behaviour = Callable[[SocketStream], Awaitable[None]]

_REASONS = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


def message(kind: str, **fields: Any) -> bytes:
    return json.dumps({"type": kind, **fields}).encode() + b"\n"


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}"]
    lines += [f"{k}: {v}" for k, v in {**headers, "Connection": "close"}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status(code: int, text: str = "injected fault", **headers: str) -> Behaviour:
    """Answer with an error status and a JSON message."""
    body = json.dumps({"message": text}).encode()

    async def behave(client: SocketStream) -> None:
        head = {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}
        await client.send(_head(code, head) + body)

    return behave


async def _silent_until_closed(client: SocketStream) -> None:
    try:
        while await client.receive():
            pass
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return


def stream(
    *lines: bytes,
    every: float = 0,
    sync: Callable[[], Awaitable[None]] | None = None,
    tail: bytes = b"",
    end: str = "close",
    headers: dict[str, str] | None = None,
) -> Behaviour:
    """A 200 stream: `lines` (one chunk each, `every` seconds apart); then it waits for
    `sync()` (e.g. until the agent has taken the stream as healthy); then `tail` (one chunk);
    then it ends:

    - "close":  the server ends the response properly (the stream is over);
    - "cut":    half a chunk, then the connection closes (a broken stream);
    - "silent": nothing more; the connection stays open until the client gives up on it.
    """

    async def behave(client: SocketStream) -> None:
        head = {"Content-Type": "application/x-ndjson", "Transfer-Encoding": "chunked"}
        await client.send(_head(200, {**head, **(headers or {})}))
        for index, line in enumerate(lines):
            if index and every:
                await anyio.sleep(every)  # the server's pace, as with keepalives
            await client.send(_chunk(line))
        if sync is not None:
            await sync()
        if tail:
            await client.send(_chunk(tail))
        if end == "close":
            await client.send(b"0\r\n\r\n")
        elif end == "cut":
            await client.send(b"40\r\n" + message("keepalive")[:10])
        elif end == "silent":
            await _silent_until_closed(client)
        else:
            raise ValueError(end)

    return behave


def raw(head: bytes, body: bytes) -> Behaviour:
    """Exactly these bytes, then close."""

    async def behave(client: SocketStream) -> None:
        await client.send(head + body)

    return behave


@dataclass
class Attempt:
    method: str
    path: str
    headers: dict[str, str]
    seen: Any  # what `observe()` returned when the attempt arrived


@dataclass
class FaultServer:
    script: list[Behaviour]
    then: Behaviour
    observe: Callable[[], Any] = lambda: None
    attempts: list[Attempt] = field(default_factory=list)
    url: str = ""
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    async def wait_for_attempts(self, n: int) -> None:
        while len(self.attempts) < n:
            await self._arrived.wait()

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    head += await client.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            request_line, *header_lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            self.attempts.append(Attempt(method, path, headers, self.observe()))
            self._arrived.set()
            self._arrived = anyio.Event()
            behaviour = self.script.pop(0) if self.script else self.then
            # The client may go away first.
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await behaviour(client)


@asynccontextmanager
async def fault_server(
    script: list[Behaviour],
    *,
    then: Behaviour | None = None,
    observe: Callable[[], Any] = lambda: None,
) -> AsyncIterator[FaultServer]:
    """Serve `script` (one behaviour per connection, in order), then `then` (default 401)."""
    server = FaultServer(list(script), then or status(401, "unknown token"), observe)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        port = listener.extra(SocketAttribute.local_port)
        server.url = f"http://127.0.0.1:{port}"
        tg.start_soon(listener.serve, server._handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()
