"""The operator's client of the REST API (`/api/v1`), used by the CLI and `conveyor run`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx

from conveyor import __version__
from conveyor import protocol as p
from conveyor.client import tls_verify
from conveyor.errors import ConveyorError, api_error

# A long poll is answered within this many seconds; the HTTP timeout leaves room above it.
WAIT_S = 30.0


def _raise_for(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise api_error(response)


class ApiClient:
    def __init__(self, http: httpx.AsyncClient):
        self._http = http

    @classmethod
    @asynccontextmanager
    async def connect(cls, endpoint: str, token: str | None) -> AsyncIterator[ApiClient]:
        if not token:
            raise ConveyorError(
                "no API token: pass --api-token or set CONVEYOR_API_TOKEN "
                "(`conveyor server token --api` prints it on the server host)"
            )
        async with httpx.AsyncClient(
            base_url=endpoint.rstrip("/") + p.REST_PREFIX,
            headers={"Authorization": f"Token {token}", "User-Agent": f"conveyor/{__version__}"},
            timeout=httpx.Timeout(WAIT_S + 30, connect=10),
            verify=tls_verify(endpoint),
        ) as http:
            yield cls(http)

    async def _get(self, path: str, **params: Any) -> httpx.Response:
        try:
            response = await self._http.get(path, params=params)
        except httpx.TransportError as exc:
            raise ConveyorError(f"cannot reach the server at {self._http.base_url}: {exc}") from exc
        _raise_for(response)
        return response

    async def _send(self, method: str, path: str, json: Any = None) -> httpx.Response:
        try:
            response = await self._http.request(method, path, json=json)
        except httpx.TransportError as exc:
            raise ConveyorError(f"cannot reach the server at {self._http.base_url}: {exc}") from exc
        _raise_for(response)
        return response

    async def create_build(self, pipeline: str, body: p.CreateBuildRequest) -> p.BuildOut:
        """Without `body.pipeline` the build runs the pipeline's stored steps; fields left
        unset (e.g. the branch) get the server's defaults."""
        json = body.model_dump(mode="json", exclude_unset=True)
        response = await self._send("POST", f"/pipelines/{pipeline}/builds", json)
        return p.BuildOut.model_validate_json(response.content)

    async def set_pipeline(self, slug: str, body: p.PipelineIn) -> p.PipelineOut:
        """Create or change a pipeline; only the fields set on `body` are sent."""
        response = await self._send(
            "PUT", f"/pipelines/{slug}", body.model_dump(mode="json", exclude_unset=True)
        )
        return p.PipelineOut.model_validate_json(response.content)

    async def list_pipelines(self) -> list[p.PipelineOut]:
        response = await self._get("/pipelines")
        return [p.PipelineOut.model_validate(item) for item in response.json()]

    async def get_pipeline(self, slug: str) -> p.PipelineOut:
        response = await self._get(f"/pipelines/{slug}")
        return p.PipelineOut.model_validate_json(response.content)

    async def unblock_step(
        self, pipeline: str, number: int, step: str, fields: dict[str, str | list[str]]
    ) -> p.BuildOut:
        response = await self._send(
            "POST",
            f"/pipelines/{pipeline}/builds/{number}/steps/{quote(step, safe='')}/unblock",
            p.UnblockRequest(fields=fields).model_dump(mode="json"),
        )
        return p.BuildOut.model_validate_json(response.content)

    async def retry_job(self, job_id: str) -> p.JobOut:
        response = await self._send("POST", f"/jobs/{quote(job_id, safe='')}/retry")
        return p.JobOut.model_validate_json(response.content)

    async def get_build(
        self, pipeline: str, number: int, *, wait: float = 0, after: str | None = None
    ) -> p.BuildOut:
        params: dict[str, Any] = {}
        if wait and after:
            params = {"wait": wait, "after": after}
        response = await self._get(f"/pipelines/{pipeline}/builds/{number}", **params)
        return p.BuildOut.model_validate_json(response.content)

    async def annotations(self, pipeline: str, number: int) -> list[p.AnnotationOut]:
        response = await self._get(f"/pipelines/{pipeline}/builds/{number}/annotations")
        return [p.AnnotationOut.model_validate(a) for a in response.json()]

    async def follow_build(self, pipeline: str, number: int) -> AsyncIterator[p.BuildOut]:
        """Yield the build now and at every change, until it is finished."""
        build = await self.get_build(pipeline, number)
        yield build
        while not build.state.terminal:
            changed = await self.get_build(pipeline, number, wait=WAIT_S, after=build.version)
            if changed.version != build.version:
                build = changed
                yield build

    async def cancel_build(self, pipeline: str, number: int) -> p.BuildOut:
        try:
            response = await self._http.post(f"/pipelines/{pipeline}/builds/{number}/cancel")
        except httpx.TransportError as exc:
            raise ConveyorError(f"cannot reach the server at {self._http.base_url}: {exc}") from exc
        _raise_for(response)
        return p.BuildOut.model_validate_json(response.content)

    async def job_log(self, job_id: str, timestamps: str = "strip") -> AsyncIterator[bytes]:
        """The log's bytes; `timestamps`: `strip` (the output as written), `render` (each line
        prefixed with its UTC time) or `raw` (as stored, with the timestamp markers)."""
        try:
            async with self._http.stream(
                "GET", f"/jobs/{job_id}/log", params={"timestamps": timestamps}
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for(response)
                async for data in response.aiter_bytes():
                    yield data
        except httpx.TransportError as exc:
            raise ConveyorError(f"cannot reach the server at {self._http.base_url}: {exc}") from exc

    async def agent_order(
        self, agent_id: str, order: str, body: dict[str, object] | None = None
    ) -> p.AgentOut:
        """pause / resume / stop (body {"force": bool}) an agent."""
        try:
            response = await self._http.post(f"/agents/{agent_id}/{order}", json=body)
        except httpx.TransportError as exc:
            raise ConveyorError(f"cannot reach the server at {self._http.base_url}: {exc}") from exc
        _raise_for(response)
        return p.AgentOut.model_validate_json(response.content)

    async def update_agent(self, agent_id: str, update: p.AgentUpdate) -> p.AgentOut:
        try:
            response = await self._http.put(
                f"/agents/{agent_id}", json=update.model_dump(exclude_none=True)
            )
        except httpx.TransportError as exc:
            raise ConveyorError(f"cannot reach the server at {self._http.base_url}: {exc}") from exc
        _raise_for(response)
        return p.AgentOut.model_validate_json(response.content)

    async def list_agents(self) -> list[p.AgentOut]:
        response = await self._get("/agents")
        return [p.AgentOut.model_validate(a) for a in response.json()]
