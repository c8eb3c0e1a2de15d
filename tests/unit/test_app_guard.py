"""The last-resort guard of every request: unexpected errors become 503, never 500."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from authority.admin import init_data
from authority.app import Limits, create_app
from authority.datadir import DataDir


def _get(tmp_path: Path, limits: Limits, *paths: str) -> list[httpx.Response]:
    data = DataDir(tmp_path / "authority")
    init_data(data, "127.0.0.1", 4285)
    app = create_app(data, limits)

    def boom() -> None:
        raise RuntimeError("disk on fire")

    app.add_api_route("/boom", boom)  # a route with a bug, as a later change might add
    transport = httpx.ASGITransport(app=app)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get(path) for path in paths]

    try:
        return asyncio.run(run())
    finally:
        app.state.db.close()


def test_an_unexpected_exception_is_answered_503_with_retry_after_and_request_id(
    tmp_path: Path,
) -> None:
    [response] = _get(tmp_path, Limits(max_concurrency=5, retry_after=42), "/boom")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "42"
    body = response.json()
    assert body["error"]["code"] == "internal_error"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "disk on fire" not in response.text  # internals stay in the server log


def test_unknown_paths_and_methods_are_json_errors_with_request_ids(tmp_path: Path) -> None:
    missing, wrong_method = _get(tmp_path, Limits(), "/api/v1/nope", "/api/v1/deploy/policy")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "no_such_endpoint"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert missing.headers["X-Request-ID"] != wrong_method.headers["X-Request-ID"]
