"""The ASGI application: agent API, REST API, OpenAPI, and one JSON error shape for all."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor import __version__
from conveyor.errors import AuthError, InvalidStateError, NotFoundError
from conveyor.server import agent_api, agents_api, artifacts_api, injob_api, rest_api
from conveyor.server.context import ServerContext


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def create_app(ctx: ServerContext) -> FastAPI:
    app = FastAPI(
        title="Conveyor",
        version=__version__,
        description="Agent API (`/agent/v1`) and REST API (`/api/v1`) of a Conveyor server.",
    )
    app.state.ctx = ctx
    app.include_router(agent_api.router)
    app.include_router(rest_api.router)
    app.include_router(agents_api.router)
    app.include_router(injob_api.router)
    app.include_router(artifacts_api.router)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(InvalidStateError)
    async def invalid_state(_: Request, exc: InvalidStateError) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(AuthError)
    async def auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return _error(401, str(exc))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
