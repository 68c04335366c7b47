"""The FastAPI application: routers, error shapes, auth, guards, and the worker's lifetime.

Every error a client can cause is JSON with the field named: 422 for invalid values (pydantic's
validation and our UserErrors), 404 for ids that name nothing, 401 without valid credentials, 403/421
for refused origins and hosts, 413 for oversized bodies. A 500 means a bug; its body still is JSON and
the traceback goes to the server log, never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from sfumato.errors import NotFoundError, UserError
from sfumato.server import a1111, clean_api, jobs_api, tools_api, ui_routes
from sfumato.server.security import BodyTooLarge, GuardMiddleware, credentials_ok
from sfumato.server.state import JobFailed, ServerState
from sfumato.settings import Settings

log = logging.getLogger("sfumato.server")
MAX_BODY_BYTES = 64 << 20


@dataclass(frozen=True)
class ServeOptions:
    """What `sfumato serve` was started with (also shown by `/sdapi/v1/cmd-flags`)."""

    host: str = "127.0.0.1"
    port: int = 7860
    api_auth: dict[str, str] = field(default_factory=dict)
    ui_auth: dict[str, str] = field(default_factory=dict)
    cors_allow_origins: tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES

    @property
    def loopback_only(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    def flags(self) -> dict[str, Any]:
        return {
            "listen": not self.loopback_only,
            "server_name": self.host,
            "port": self.port,
            "api_auth": "***" if self.api_auth else None,
            "gradio_auth": "***" if self.ui_auth else None,
            "cors_allow_origins": list(self.cors_allow_origins) or None,
            "api": True,
        }


def _error(status: int, message: str, field: str | None, detail: Any = None) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": message, "field": field, "detail": detail if detail is not None else message},
    )


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    location = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field_name = ".".join(location) or "body"
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    return _error(422, f"{field_name}: {first.get('msg')}", field_name, detail)


def _user_error(request: Request, exc: UserError) -> JSONResponse:
    return _error(404 if isinstance(exc, NotFoundError) else 422, str(exc), exc.field)


def _job_failed(request: Request, exc: JobFailed) -> JSONResponse:
    return _error(500, str(exc), None)


def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
    return _error(413, str(exc), "body")


def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    response = _error(exc.status_code, str(exc.detail), None)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return _error(500, f"internal error: {type(exc).__name__}", None)


def basic_auth(allowed: dict[str, str]):
    """A dependency that requires one of the `allowed` user/password pairs (HTTP Basic)."""

    def check(request: Request) -> None:
        if allowed and not credentials_ok(request.headers.get("authorization"), allowed):
            raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Basic"})

    return check


def create_app(settings: Settings, options: ServeOptions | None = None) -> FastAPI:
    options = options or ServeOptions()
    state = ServerState(settings, flags=options.flags())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(
        title="sfumato",
        description="A1111-compatible API (/sdapi/v1) and sfumato's job queue (/sfumato/v1).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.sfumato = state
    api_guard = [Depends(basic_auth(options.api_auth))]
    app.include_router(a1111.router, dependencies=api_guard)
    app.include_router(jobs_api.router, dependencies=api_guard)
    app.include_router(clean_api.router, dependencies=api_guard)
    app.include_router(tools_api.router, dependencies=api_guard)
    app.include_router(ui_routes.router, dependencies=[Depends(basic_auth(options.ui_auth))])
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(UserError, _user_error)  # type: ignore[arg-type]
    app.add_exception_handler(JobFailed, _job_failed)  # type: ignore[arg-type]
    app.add_exception_handler(BodyTooLarge, _too_large)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal)
    if options.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors_allow_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials=True,
        )
    app.add_middleware(
        GuardMiddleware,
        loopback_only=options.loopback_only,
        allowed_origins=options.cors_allow_origins,
        max_body_bytes=options.max_body_bytes,
    )
    return app
