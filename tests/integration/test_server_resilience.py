"""The server under stress and misuse: overload, broken database, a port in use."""

from __future__ import annotations

import socket
import sqlite3
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from agent.pinning import pinned_context
from tests.integration.authority_process import Authority, admin, free_port, initialise


@pytest.fixture
def small_authority(tmp_path: Path) -> Authority:
    data = tmp_path / "authority"
    port = free_port()
    initialise(data, port)
    admin(data, "org", "create", "Demo", "--auth", "local")
    admin(data, "policy", "create", "--org", "Demo")
    return Authority(
        data=data, port=port, extra_args=["--max-concurrency", "1", "--retry-after", "7"]
    )


def _hold_a_request_open(authority: Authority) -> ssl.SSLSocket:
    """A request whose body never finishes arriving: it stays in flight as long as we like."""
    raw = socket.create_connection(("127.0.0.1", authority.port))
    tls = pinned_context(authority.pins()).wrap_socket(raw)
    tls.sendall(
        b"POST /api/v1/deploy/policy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    return tls


def test_past_max_concurrency_the_server_answers_503_with_retry_after_at_once(
    small_authority: Authority,
) -> None:
    small_authority.start()
    try:
        held = _hold_a_request_open(small_authority)
        try:
            with small_authority.client() as client:
                # The first request may race the held one into the server; poll briefly.
                for _ in range(50):
                    response = client.get("/api/v1/health")
                    if response.status_code == 503:
                        break
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "7"
            assert response.json()["error"]["code"] == "overloaded"
        finally:
            held.close()
        with small_authority.client() as client:
            assert client.get("/api/v1/health").status_code == 200
    finally:
        small_authority.stop()


def test_a_broken_database_is_a_503_with_retry_after_never_a_500(tmp_path: Path) -> None:
    data = tmp_path / "authority"
    port = free_port()
    initialise(data, port)
    server = Authority(data=data, port=port)
    server.start()
    try:
        with sqlite3.connect(data / "authority.db") as db:
            db.execute("DROP TABLE retired_tokens")
        with server.client() as client:
            response = client.post(
                "/api/v1/deploy/policy",
                headers={"X-Deployment-Token": "0fb12341-246b-448d-b07f-c6573ad5ad02"},
                json={"os": "linux"},
            )
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert response.json()["request_id"] in (data / "log" / "authority.log").read_text()
    finally:
        server.stop()


def test_a_port_in_use_is_one_clear_sentence(small_authority: Authority) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", small_authority.port))
        taken.listen(1)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "authority",
                "serve",
                "--data",
                str(small_authority.data),
                "--host",
                "127.0.0.1",
                "--port",
                str(small_authority.port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"port {small_authority.port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
