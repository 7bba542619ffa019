"""The agent client's retry policy: what is retried, how long, and `Retry-After`.

The server here is a scripted loopback one (tests/agent/faultserver.py): it exists only to
answer with the faults under test.
"""

from __future__ import annotations

import gc
import json
import ssl
import sys

import anyio
import httpx
import pytest

from conveyor.client import CHUNK, Backoff, JobClient, retrying, tls_verify
from conveyor.errors import APIError
from tests.agent.faultserver import fault_server, raw, status

pytestmark = pytest.mark.anyio


def ack(sequence: int, offset: int, size: int) -> bytes:
    body = json.dumps({"sequence": sequence, "offset": offset, "size": size, "stored": True})
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body.encode()


async def test_a_chunk_waits_as_long_as_retry_after_asks() -> None:
    async with (
        fault_server([status(503, "busy", **{"Retry-After": "2"})], then=raw(ack(1, 0, 3), b""))
        as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):  # fmt: skip
        job = JobClient(http, "job-token", "job-1")
        started = anyio.current_time()
        answer = await job.upload_chunk(1, 0, b"abc")
        waited = anyio.current_time() - started
    assert answer.stored and len(server.attempts) == 2
    # The policy's own first wait is at most 1 s: only Retry-After makes it 2.
    assert CHUNK.delay(0, None) <= 1.0
    assert waited >= 2.0


async def test_a_chunk_refused_for_good_is_not_retried() -> None:
    async with (
        fault_server([status(409, "another chunk is stored at offset 0")],
                     then=raw(ack(1, 0, 3), b"")) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):  # fmt: skip
        with pytest.raises(APIError, match="409"):
            await JobClient(http, "job-token", "job-1").upload_chunk(1, 0, b"abc")
    assert len(server.attempts) == 1


async def test_chunks_are_retried_without_a_fixed_count() -> None:
    assert CHUNK.attempts is None
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls <= 40:  # past any count a bounded policy here would allow
            raise httpx.ConnectError("connection refused")
        return "stored"

    unbounded = Backoff(attempts=None, base=0.0001, cap=0.0001)
    assert await retrying("chunk 1", unbounded, flaky) == "stored"
    assert calls == 41


async def test_a_bounded_policy_gives_up_after_its_attempts() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused")

    with pytest.raises(httpx.ConnectError):
        await retrying("finish", Backoff(attempts=3, base=0.0001, cap=0.0001), down)
    assert calls == 3


def test_the_wait_stays_within_the_cap_however_many_attempts() -> None:
    for attempt in (0, 5, 64, 2000):
        assert CHUNK.delay(attempt, None) <= CHUNK.cap
    assert CHUNK.delay(2000, 90.0) == 90.0  # Retry-After beyond the cap is honoured


def test_a_plain_http_endpoint_loads_no_ca_bundle_and_trusts_no_certificate() -> None:
    """An http endpoint's client never uses TLS; were it to, it would refuse every
    certificate (verification on, no CA), never accept one unverified."""
    context = tls_verify("http://127.0.0.1:8080")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0
    # An https endpoint verifies as httpx does by default (certifi, SSL_CERT_FILE/_DIR).
    assert tls_verify("https://ci.example.com") is True
    assert tls_verify("HTTPS://ci.example.com:8443/") is True


async def test_an_uploaded_chunk_is_let_go_of_and_sent_with_its_length() -> None:
    """httpx's request and response refer to each other: a chunk held by the request would
    live until the garbage collector's next pass. Once the upload returns, nothing of the
    client holds it, even with the collector off; and it goes with a Content-Length, not
    chunked."""
    sent: list[httpx.Headers] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request.headers)

    data = bytes(range(256)) * 400
    async with (
        fault_server([raw(ack(1, 0, len(data)), b"")]) as server,
        httpx.AsyncClient(base_url=server.url, event_hooks={"request": [record]}) as http,
    ):  # fmt: skip
        job = JobClient(http, "job-token", "job-1")
        gc.disable()
        try:
            before = sys.getrefcount(data)
            assert (await job.upload_chunk(1, 0, data)).stored
            after = sys.getrefcount(data)
        finally:
            gc.enable()
    assert after == before
    assert sent[0]["content-length"] == str(len(data))
    assert "transfer-encoding" not in sent[0]
