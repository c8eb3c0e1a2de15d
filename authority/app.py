"""The authority's ASGI application: routes, error mapping, overload protection, access log.

Two promises hold for every request, whatever a route does:
- no 500: an unexpected exception is logged with the request ID and answered 503 with
  Retry-After, so agents treat it as transient and come back later;
- no queueing under a storm: past `max_concurrency` requests in flight, the answer is an
  immediate 503 with Retry-After, so a mass install cannot topple the server.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authority import __version__
from authority.admin import Admin
from authority.api import admin_routes, agent_routes, backup_routes
from authority.console import pages as console_pages
from authority.datadir import DataDir
from authority.db import Database, create_schema
from authority.errors import AuthorityError, TooManyAttempts, Unavailable
from authority.tls import CertificateStore

log = logging.getLogger("authority")
access_log = logging.getLogger("authority.access")

REQUEST_ID_HEADER = "X-Request-ID"


@dataclass(frozen=True)
class Limits:
    max_concurrency: int = 256
    retry_after: int = 60


def error_body(code: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}, "request_id": request_id}


def _raw_json(status: int, body: dict[str, Any], headers: dict[str, str]) -> list[Message]:
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return [
        {"type": "http.response.start", "status": status, "headers": raw_headers},
        {"type": "http.response.body", "body": payload},
    ]


class GuardMiddleware:
    """Request IDs, the access log, the concurrency limit and the last-resort 503."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0
        response_started = False
        retry_headers = {"Retry-After": str(self.limits.retry_after), REQUEST_ID_HEADER: request_id}

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if self.in_flight >= self.limits.max_concurrency:
                body = error_body(
                    "overloaded",
                    f"the server is busy; retry after {self.limits.retry_after} seconds",
                    request_id,
                )
                for message in _raw_json(503, body, retry_headers):
                    await send(message)
                status = 503
                return
            self.in_flight += 1
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self.in_flight -= 1
        except Exception:
            log.exception("rid=%s unexpected error on %s", request_id, scope.get("path"))
            if not response_started:
                body = error_body(
                    "internal_error",
                    f"the server hit an unexpected error (request {request_id}); "
                    "it has been logged, retry later",
                    request_id,
                )
                for message in _raw_json(503, body, retry_headers):
                    await send(message)
                status = 503
        finally:
            client = scope.get("client")
            # The path only: never the query string or headers, where secrets could travel.
            access_log.info(
                "rid=%s client=%s %s %s status=%d ms=%.1f",
                request_id,
                client[0] if client else "-",
                scope.get("method"),
                scope.get("path"),
                status,
                (time.perf_counter() - started) * 1000,
            )


def is_api(path: str) -> bool:
    """Whether a path belongs to the API (JSON errors) rather than the console (HTML pages)."""
    return path == "/api" or path.startswith("/api/")


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return str(value) if value else None


def create_app(data: DataDir, limits: Limits | None = None) -> FastAPI:
    """The application over one initialised data folder."""
    data.require_initialised()
    limits = limits or Limits()
    app = FastAPI(
        title="Holdfast authority",
        version=__version__,
        description="Agent-facing API of the Holdfast reference authority. See docs/contract.md.",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.data = data
    app.state.db = Database(data.database_url)
    create_schema(app.state.db.engine)  # a data folder from an earlier release gains what is new
    app.state.certs = CertificateStore(data)
    app.state.limits = limits
    app.state.store = backup_routes.chunk_store(data, app.state.db)
    # The console's operations: the CLI's own (authority/admin.py), over the server's database.
    app.state.admin = Admin(data, db=app.state.db)

    @app.exception_handler(AuthorityError)
    async def on_authority_error(request: Request, exc: AuthorityError) -> JSONResponse:
        headers = {}
        if isinstance(exc, Unavailable | TooManyAttempts):
            headers["Retry-After"] = str(exc.retry_after)
        return JSONResponse(
            error_body(exc.code, exc.message, _request_id(request)), exc.status, headers=headers
        )

    @app.exception_handler(OperationalError)
    async def on_database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        # Routes map it through run_in_transaction; the chunk store's own transactions
        # (packs, chunks) reach here. A database locked past its busy timeout is transient.
        log.warning("rid=%s database unavailable: %s", _request_id(request), exc.orig)
        return JSONResponse(
            error_body(
                "database_busy",
                "the authority's database is busy; retry later",
                _request_id(request),
            ),
            503,
            headers={"Retry-After": str(limits.retry_after)},
        )

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return JSONResponse(
            error_body(
                "invalid_request", f"the request is not valid: {problems}", _request_id(request)
            ),
            422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if not is_api(request.url.path) and exc.status_code in (404, 405):
            # A browser outside the API: a page, not JSON (the page reads the session).
            return await run_in_threadpool(
                console_pages.not_found_page, request, exc.status_code, exc.headers
            )
        code = {404: "no_such_endpoint", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        status = exc.status_code if exc.status_code < 500 else 503
        headers = {"Retry-After": str(limits.retry_after)} if status == 503 else {}
        return JSONResponse(
            error_body(code, str(exc.detail), _request_id(request)), status, headers=headers
        )

    @app.get("/api/v1/health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness: answers without touching the database."""
        return {"status": "ok", "version": __version__}

    app.include_router(agent_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(backup_routes.router)
    app.include_router(console_pages.router)  # after the API: the console's paths are the rest
    app.add_middleware(GuardMiddleware, limits=limits)
    return app


__all__ = ["REQUEST_ID_HEADER", "GuardMiddleware", "Limits", "create_app", "error_body", "is_api"]
