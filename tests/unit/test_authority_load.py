"""What keeps the authority's answers cheap and quick when a fleet installs at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import psutil
import pytest
from sqlalchemy.exc import OperationalError
from starlette.types import Receive, Scope, Send

from agent.errors import ContactError
from agent.transport import AuthorityClient
from authority import users
from authority.admin import init_data
from authority.app import Limits, create_app
from authority.datadir import DataDir
from authority.db import Database
from authority.errors import Forbidden
from authority.policies import policy_for_token
from authority.registration import DeviceReport, RegistrationRequest, register
from authority.serve import ThreadLimit, bind_socket, worker_limits
from authority.sign_in import SignInRequest, sign_in
from authority.tls import CertificateStore, Fingerprints
from authority.users import list_users, user_summary
from benchmarks.fleet.authority import admin, free_port

MakePolicy = Callable[..., str]
GUID = "0b7e4b56-4f0e-4d7c-9a55-2c1d3e4f5a6b"
REPORT = DeviceReport(guid=GUID, name="alice-laptop", os="linux", agent_version="0.1.0")


def test_silent_registration_makes_the_user_without_hashing_a_password_nobody_knows(
    database: Database, make_policy: MakePolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scrypt per new user was most of a mass install's cost on the authority.
    def no_hashing(password: str) -> str:
        raise AssertionError("registration hashed a password")

    monkeypatch.setattr(users, "hash_password", no_hashing)
    token = make_policy("Acme")
    with database.transaction() as s:
        register(
            s,
            policy_for_token(s, token),
            RegistrationRequest(device=REPORT, username="alice@example.com", user_home="/h"),
        )
    with database.transaction() as s:
        (user,) = list_users(s)
        summary = user_summary(s, user)
    assert summary["can_sign_in"] is False
    assert summary["cannot_sign_in_because"] == "password hidden: reset it"
    with pytest.raises(Forbidden) as refused, database.transaction() as s:
        sign_in(
            s,
            policy_for_token(s, token),
            SignInRequest(
                device=REPORT, username="alice@example.com", password="guess", user_home="/h"
            ),
            now=dt.datetime.now(dt.UTC),
        )
    assert refused.value.code == "password_reset_required"


def test_answers_leave_at_once_without_waiting_for_the_clients_ack() -> None:
    # Without TCP_NODELAY an answer written as headers then body waited for the client's
    # delayed ACK: 40 ms for every request on Linux.
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]

    async def connect_once() -> int:
        seen: list[int] = []

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            served = writer.get_extra_info("socket")
            seen.append(served.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.read()
            writer.close()
            await writer.wait_closed()
        return seen[0]

    assert asyncio.run(connect_once()) != 0


def test_pins_follow_a_rollover_made_by_another_process_and_are_parsed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = DataDir(tmp_path)
    admin = CertificateStore(data)  # `tls renew` / `tls activate`, another process
    first = admin.create_current("backup.example.com")
    parsed: list[bytes] = []
    of_pem = Fingerprints.of_pem

    def counting(pem: bytes) -> Fingerprints:
        parsed.append(pem)
        return of_pem(pem)

    monkeypatch.setattr(Fingerprints, "of_pem", staticmethod(counting))
    served = CertificateStore(data)  # what `serve` answers every policy request with
    for _ in range(3):
        assert [p["sha1"] for p in served.pins()] == [first.sha1]
    assert len(parsed) == 1

    staged = admin.renew("backup.example.com")
    assert [p["sha1"] for p in served.pins()] == [first.sha1, staged.sha1]
    admin.activate()
    assert [(p["role"], p["sha1"]) for p in served.pins()] == [("current", staged.sha1)]


def test_workers_share_the_in_flight_limit_so_the_server_total_stays_within_it() -> None:
    assert worker_limits(Limits(256, 60), 2) == Limits(128, 60)
    assert worker_limits(Limits(3, 30), 2) == Limits(1, 30)
    assert worker_limits(Limits(1, 60), 4) == Limits(1, 60)


def test_requests_code_runs_in_at_most_the_given_threads_at_once() -> None:
    running = peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.to_thread.run_sync(work)

    limited = ThreadLimit(app, 3)

    async def requests() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(limited, {"type": "http"}, None, None)

    anyio.run(requests)
    assert peak == 3


@pytest.mark.integration
def test_serve_with_workers_answers_from_each_and_stops_them_all_on_sigterm(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    port = free_port()
    admin(data, "init", "--host", "127.0.0.1", "--port", str(port))
    log = (tmp_path / "serve.out").open("wb")
    with log:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "authority", "serve", "--data", str(data)),
                *("--host", "127.0.0.1", "--workers", "2", "--threads", "3"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        pins = [Fingerprints.of_pem((data / "tls" / "current.crt").read_bytes()).sha1]
        with AuthorityClient(f"https://127.0.0.1:{port}", pins=pins, timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert client.health()["status"] == "ok"
                    break
                except ContactError:
                    assert time.monotonic() < deadline, (tmp_path / "serve.out").read_text()
                    time.sleep(0.1)
        workers = psutil.Process(server.pid).children()
        assert len(workers) == 2
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    assert code == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    served = (tmp_path / "serve.out").read_text()
    assert served.count("serving https://127.0.0.1") == 2
    assert served.count("threads=3") == 2


def test_a_database_locked_in_the_chunk_store_is_database_busy_not_an_internal_error(
    tmp_path: Path,
) -> None:
    # The store's transactions are its own: a lock that outlasts the busy timeout there
    # reached the last-resort guard as internal_error in a 10,000-device storm.
    data = DataDir(tmp_path / "authority")
    init_data(data, "127.0.0.1", 4285)
    app = create_app(data, Limits(retry_after=42))

    def locked() -> None:
        raise OperationalError("INSERT INTO chunks ...", {}, sqlite3.OperationalError("locked"))

    app.add_api_route("/locked", locked)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/locked")

    try:
        response = asyncio.run(get())
    finally:
        app.state.db.close()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "42"
    assert response.json()["error"]["code"] == "database_busy"
