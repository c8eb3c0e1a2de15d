"""The last-resort guard of every request: unexpected errors and overload become 503."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from authority.app import GuardMiddleware, Limits


async def _boom(request: Request) -> JSONResponse:
    raise RuntimeError("disk on fire")


async def _fine(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def _client(limits: Limits) -> TestClient:
    app = Starlette(routes=[Route("/boom", _boom), Route("/fine", _fine)])
    return TestClient(GuardMiddleware(app, limits))


def test_an_unexpected_exception_is_answered_503_with_retry_after_and_request_id() -> None:
    with _client(Limits(max_concurrency=5, retry_after=42)) as client:
        response = client.get("/boom")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "42"
    body = response.json()
    assert body["error"]["code"] == "internal_error"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "disk on fire" not in response.text  # internals stay in the server log


def test_every_answer_carries_a_request_id() -> None:
    with _client(Limits()) as client:
        first = client.get("/fine").headers["X-Request-ID"]
        second = client.get("/fine").headers["X-Request-ID"]
    assert first and second and first != second
