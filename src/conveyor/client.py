"""The agent's HTTP client: one method per agent API endpoint, each with its retry budget.

`AgentClient` speaks with the worker's access token (or the registration token, for
`register`); `JobClient` with a job's own token. A retryable failure (network error, 429, 5xx)
is retried with exponential backoff and jitter, honouring `Retry-After`; any other 4xx is final.
A 401 or 404 on a job call raises `JobGoneError`: the job is finished, reassigned or gone.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import anyio
import httpx
from pydantic import BaseModel, TypeAdapter

from conveyor import __version__
from conveyor import protocol as p
from conveyor.errors import APIError, api_error, is_retryable

log = logging.getLogger("conveyor.client")

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")


@dataclass(frozen=True)
class Backoff:
    """`attempts` tries in all (None: until cancelled); the n-th wait is base·2ⁿ capped at
    `cap`, with jitter."""

    attempts: int | None
    base: float = 1.0
    cap: float = 60.0
    network_only: bool = False

    def delay(self, attempt: int, retry_after: float | None) -> float:
        # The exponent is bounded: an unbounded policy may count past what a float holds.
        window = min(self.cap, self.base * 2 ** min(attempt, 60))
        wait = random.uniform(window / 2, window)
        return max(wait, retry_after or 0.0)


# Budgets per call, after the Buildkite agent's (shorter where a local server is the norm).
REGISTER = Backoff(attempts=30, base=1, cap=10)
CONNECT = Backoff(attempts=10, base=1, cap=5)
DISCONNECT = Backoff(attempts=4, base=0.5, cap=1)
HEARTBEAT = Backoff(attempts=10, base=1, cap=5)
PING = Backoff(attempts=1)
ACCEPT = Backoff(attempts=30, base=0.5, cap=5, network_only=True)
START = Backoff(attempts=7, base=1, cap=32)
# A chunk is retried for as long as the server may come back: while the job runs, and then
# until the log streamer's flush deadline cancels it. Only a final answer (4xx) gives up early.
# The short cap resumes uploads soon after the server is back.
CHUNK = Backoff(attempts=None, base=1, cap=30)
# Until the worker's own deadline for it (agent.worker.FINISH_DEADLINE_S): a job's last word
# is worth waiting for a server that is away.
FINISH = Backoff(attempts=None, base=1, cap=30)
STATE = Backoff(attempts=3, base=0.5, cap=2)
# A job that waits for its dependencies is asked for again, for up to about ten minutes.
ACQUIRE = Backoff(attempts=60, base=1, cap=10)
# Uploads carry an id, so a retry after a lost answer adds nothing twice.
UPLOAD = Backoff(attempts=6, base=1, cap=10)
# In-job commands (meta-data, annotations, steps): a job waits a little for a busy server.
IN_JOB = Backoff(attempts=6, base=1, cap=10)
# An artifact is sent again from its start; PUT by path replaces, so a retry stores it once.
ARTIFACT = Backoff(attempts=6, base=1, cap=10)


async def retrying(what: str, policy: Backoff, call: Callable[[], Awaitable[R]]) -> R:
    attempt = 0
    while True:
        try:
            return await call()
        except (httpx.TransportError, APIError) as exc:
            retryable = is_retryable(exc) and not (
                policy.network_only and isinstance(exc, APIError)
            )
            attempt += 1
            if not retryable or (policy.attempts is not None and attempt >= policy.attempts):
                raise
            retry_after = exc.retry_after if isinstance(exc, APIError) else None
            delay = policy.delay(attempt - 1, retry_after)
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            await anyio.sleep(delay)


def tls_verify(endpoint: str) -> ssl.SSLContext | bool:
    """What a client that only requests paths under `endpoint` verifies TLS with.

    An https endpoint gets httpx's default (True: certifi's CA bundle, or SSL_CERT_FILE /
    SSL_CERT_DIR), as before. A plain http endpoint uses no TLS at all: every request is a
    path under it and redirects are not followed, and a proxy's own TLS has its own context. So
    it skips loading a CA bundle, which would stay in the agent's memory for its whole life;
    its context still demands a verified certificate and trusts no CA, so a request that did
    reach an https URL would be refused, never sent unverified.
    """
    if urlsplit(endpoint).scheme.lower() == "https":
        return True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    return context


def new_http_client(endpoint: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=endpoint.rstrip("/"),
        verify=tls_verify(endpoint),
        timeout=httpx.Timeout(60.0, connect=10.0),
        headers={"User-Agent": f"conveyor-agent/{__version__}"},
        # No cap on connections: every streaming worker of a pool holds one for its stream, and
        # its other calls (heartbeats, jobs) need more on top.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
    )


class _Base:
    def __init__(self, http: httpx.AsyncClient, token: str, *, job_call: bool = False):
        self._http = http
        self._headers = {"Authorization": f"Token {token}"}
        self._job_call = job_call

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        response = await self._http.request(
            method,
            p.API_PREFIX + path,
            json=json,
            content=content,
            params=params,
            headers={**self._headers, **(headers or {})},
        )
        if response.status_code >= 400:
            raise api_error(response, job_call=self._job_call)
        return response

    async def _call(
        self, what: str, policy: Backoff, method: str, path: str, model: type[M], **kw: Any
    ) -> M:
        async def once() -> M:
            return model.model_validate_json((await self._request(method, path, **kw)).content)

        return await retrying(what, policy, once)

    async def _call_empty(
        self, what: str, policy: Backoff, method: str, path: str, **kw: Any
    ) -> None:
        async def once() -> None:
            await self._request(method, path, **kw)

        await retrying(what, policy, once)


async def _one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _now() -> str:
    return datetime.now(UTC).isoformat()


class AgentClient(_Base):
    """Calls made with the registration token (register) or a worker's access token."""

    async def register(self, body: p.RegisterRequest) -> p.RegisterResponse:
        return await self._call(
            "register", REGISTER, "POST", "/register", p.RegisterResponse,
            json=body.model_dump(mode="json"),
        )  # fmt: skip

    def with_token(self, token: str) -> AgentClient:
        return AgentClient(self._http, token)

    async def connect(self) -> None:
        await self._call_empty("connect", CONNECT, "POST", "/connect")

    async def disconnect(self) -> None:
        await self._call_empty("disconnect", DISCONNECT, "POST", "/disconnect")

    async def heartbeat(self) -> p.HeartbeatResponse:
        return await self._call(
            "heartbeat", HEARTBEAT, "POST", "/heartbeat", p.HeartbeatResponse,
            json={"sent_at": _now()},
        )  # fmt: skip

    async def ping(self) -> p.PingResponse:
        return await self._call("ping", PING, "GET", "/ping", p.PingResponse)

    async def acquire(self, job_id: str) -> p.JobRef:
        """Ask for one named job; waits (retrying) while it is not runnable yet (423)."""

        async def once() -> p.JobRef:
            try:
                response = await self._request("PUT", f"/jobs/{job_id}/acquire")
            except APIError as exc:
                if exc.status == 423:
                    # Not runnable yet: retry like a server error, honouring Retry-After.
                    raise APIError(503, str(exc), retry_after=exc.retry_after) from exc
                raise
            return p.JobRef.model_validate_json(response.content)

        return await retrying("acquire", ACQUIRE, once)

    async def accept(self, job_id: str) -> p.JobSpec:
        return await self._call("accept", ACCEPT, "PUT", f"/jobs/{job_id}/accept", p.JobSpec)

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[AsyncIterator[p.StreamMessage]]:
        """Open the worker's stream; iterate it for messages.

        A read that waits past three keepalive intervals raises `httpx.ReadTimeout`: the
        stream is dead even if the connection is not closed.
        """
        timeout = httpx.Timeout(10.0, read=3 * p.STREAM_KEEPALIVE_S)
        async with self._http.stream(
            "GET", p.API_PREFIX + "/stream", headers=self._headers, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise api_error(response)

            async def messages() -> AsyncIterator[p.StreamMessage]:
                async for line in response.aiter_lines():
                    if line.strip():
                        yield p.StreamMessage.model_validate_json(line)

            yield messages()

    def job_client(self, spec: p.JobSpec) -> JobClient:
        return JobClient(self._http, spec.token, spec.id)


class JobClient(_Base):
    """Calls made with a job's own token, for that job only."""

    def __init__(self, http: httpx.AsyncClient, token: str, job_id: str):
        super().__init__(http, token, job_call=True)
        self.job_id = job_id

    async def start(self) -> None:
        await self._call_empty(
            "start", START, "PUT", f"/jobs/{self.job_id}/start", json={"started_at": _now()}
        )

    async def upload_chunk(self, sequence: int, offset: int, data: bytes) -> p.ChunkAck:
        async def once() -> p.ChunkAck:
            # The chunk goes as a one-piece stream of known length, not as `content=data`:
            # httpx's request and response refer to each other, so a request holding the
            # chunk keeps it (a megabyte) alive until the garbage collector's next pass, and
            # a busy log would pile chunks up in memory. A finished generator lets go of it.
            response = await self._request(
                "POST", f"/jobs/{self.job_id}/chunks",
                content=_one_piece(data),
                params={"sequence": sequence, "offset": offset, "size": len(data)},
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(data)),
                },
            )  # fmt: skip
            return p.ChunkAck.model_validate_json(response.content)

        return await retrying(f"chunk {sequence}", CHUNK, once)

    async def state(self) -> p.JobStateResponse:
        return await self._call(
            "job state", STATE, "GET", f"/jobs/{self.job_id}", p.JobStateResponse
        )

    async def finish(self, body: p.FinishRequest) -> None:
        await self._call_empty(
            "finish", FINISH, "PUT", f"/jobs/{self.job_id}/finish",
            json=body.model_dump(mode="json"),
        )  # fmt: skip

    async def upload_pipeline(self, body: p.PipelineUploadRequest) -> p.PipelineUploadResponse:
        """Add steps to the job's build (`conveyor pipeline upload`). Give `upload_id` so the
        retries this makes are safe."""
        return await self._call(
            "pipeline upload", UPLOAD, "POST", f"/jobs/{self.job_id}/pipelines",
            p.PipelineUploadResponse, json=body.model_dump(mode="json"),
        )  # fmt: skip

    # ---- in-job commands: meta-data, annotations, steps, build cancel ------------------------

    async def set_meta_data(self, key: str, value: str) -> None:
        await self._call_empty(
            "meta-data set", IN_JOB, "PUT", f"/jobs/{self.job_id}/meta-data",
            json=p.MetaDataSet(key=key, value=value).model_dump(),
        )  # fmt: skip

    async def get_meta_data(self, key: str) -> str | None:
        """The value, or None when the build has no such key."""
        found = await self._call(
            "meta-data get", IN_JOB, "GET", f"/jobs/{self.job_id}/meta-data",
            p.MetaDataValue, params={"key": key},
        )  # fmt: skip
        return found.value

    async def meta_data_keys(self) -> list[str]:
        answer = await self._call(
            "meta-data keys", IN_JOB, "GET", f"/jobs/{self.job_id}/meta-data-keys", p.MetaDataKeys
        )
        return answer.keys

    async def annotate(self, body: p.AnnotationRequest) -> p.AnnotationOut:
        return await self._call(
            "annotate", IN_JOB, "POST", f"/jobs/{self.job_id}/annotations", p.AnnotationOut,
            json=body.model_dump(mode="json"),
        )  # fmt: skip

    async def remove_annotation(self, context: str) -> bool:
        """False when the build has no annotation of that context."""
        answer = await self._call(
            "annotation remove", IN_JOB, "DELETE", f"/jobs/{self.job_id}/annotations",
            p.AnnotationRemoved, params={"context": context},
        )  # fmt: skip
        return answer.removed

    async def get_step(self, key: str | None) -> p.StepInfo:
        return await self._call(
            "step get", IN_JOB, "GET", f"/jobs/{self.job_id}/step", p.StepInfo,
            params={"key": key} if key else None,
        )  # fmt: skip

    async def update_step(self, key: str | None, update: p.StepUpdate) -> p.StepInfo:
        return await self._call(
            "step update", IN_JOB, "PUT", f"/jobs/{self.job_id}/step", p.StepInfo,
            params={"key": key} if key else None, json=update.model_dump(mode="json"),
        )  # fmt: skip

    async def cancel_build(self) -> None:
        await self._call_empty("build cancel", IN_JOB, "POST", f"/jobs/{self.job_id}/build/cancel")

    # ---- artifacts: upload, search, download -------------------------------------------------

    async def upload_artifact(
        self,
        path: str,
        content: Callable[[], AsyncIterator[bytes]],
        *,
        size: int,
        sha256: str,
        content_type: str = "application/octet-stream",
    ) -> p.ArtifactOut:
        """Store `size` bytes as this job's artifact at `path`. `content` is called once per
        attempt and streams the bytes from their start, so nothing is held in memory."""
        params: dict[str, str | int] = {
            "path": path, "size": size, "sha256": sha256, "content_type": content_type,
        }  # fmt: skip
        headers = {
            **self._headers,
            "Content-Type": "application/octet-stream",
            # A length instead of chunked encoding: the server can refuse an oversized
            # artifact before a byte of it is sent on.
            "Content-Length": str(size),
        }

        async def once() -> p.ArtifactOut:
            response = await self._http.request(
                "PUT", f"{p.API_PREFIX}/jobs/{self.job_id}/artifacts",
                params=params, content=content(), headers=headers,
            )  # fmt: skip
            if response.status_code >= 400:
                raise api_error(response, job_call=True)
            return p.ArtifactOut.model_validate_json(response.content)

        return await retrying(f"artifact upload {path}", ARTIFACT, once)

    async def search_artifacts(
        self, query: str | None = None, *, step: str | None = None, build: str | None = None
    ) -> list[p.ArtifactOut]:
        """The artifacts of this job's build matching the glob `query` (all without one).
        `build` may only name this job's own build (403 otherwise)."""
        given = {"query": query, "step": step, "build": build}
        params = {k: v for k, v in given.items() if v is not None}

        async def once() -> list[p.ArtifactOut]:
            response = await self._request("GET", f"/jobs/{self.job_id}/artifacts", params=params)
            return _ARTIFACTS.validate_json(response.content)

        return await retrying("artifact search", IN_JOB, once)

    @asynccontextmanager
    async def artifact_content(self, artifact_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open one artifact of this job's build and iterate its content. Not retried here: a
        download that breaks is started again by its caller, from the first byte."""
        async with self._http.stream(
            "GET", f"{p.API_PREFIX}/jobs/{self.job_id}/artifacts/{quote(artifact_id)}",
            headers=self._headers,
        ) as response:  # fmt: skip
            if response.status_code >= 400:
                await response.aread()
                error = api_error(response, job_call=True)
                if error.status == 404:
                    # The job's token was accepted, so it is the artifact that is missing.
                    error = APIError(404, str(error).removeprefix("server answered 404: "))
                raise error
            yield response.aiter_bytes()


_ARTIFACTS = TypeAdapter(list[p.ArtifactOut])
