"""A signed-in test browser over the console, and the fleet the console tests look at.

`Console` is a browser with its cookies and the CSRF token its pages carry; `browser` opens
one over `console_app` (acme with a policy, a deployer and a read-only viewer) and signs it
in; `add_fleet` gives acme a registered device and one whose registration was refused;
`world` is everything a console form could change. The fixtures built from these are in
conftest.py; tests/integration/test_console_ldap.py uses them too.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
import warnings
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from authority.admin import Admin
from authority.app import create_app
from authority.attempts import record_attempt
from authority.console.accounts import create_account
from authority.datadir import DataDir
from authority.db import Device, Policy, Snapshot, User
from authority.orgs import find_org, list_orgs
from authority.policies import find_policy
from authority.registration import DeviceReport, RegistrationRequest, record_report, register

with warnings.catch_warnings():
    # starlette.testclient prefers httpx2 and says so on import; httpx is what we have.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PASSWORD = "correct horse battery"
REGISTERED = "1b6f2c1e-0c59-4d5e-8a0e-6e4f2d7f1a01"
PENDING = "2c7a3d2f-1d6a-4e6f-9b1f-7f5a3e8a2b02"
REFUSAL = (
    "organization 'acme' uses local authentication, where usernames are e-mail addresses; "
    "the detection script reported 'jdoe'"
)
SHIPPED = Path(__file__).parents[3] / "authority" / "detection_scripts"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Console:
    """A browser on the console: its cookies, and the CSRF token its pages carry."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        # starlette types TestClient as httpx2's client, not installed here: mypy sees Any.
        response: httpx.Response = self.client.get(path, follow_redirects=False, **kwargs)
        return response

    def sign_in(self, name: str, password: str = PASSWORD, next_path: str = "") -> httpx.Response:
        form = self.get("/sign-in")
        token = _CSRF.search(form.text)
        assert token is not None
        fields = {"name": name, "password": password, "csrf_token": token.group(1)}
        response: httpx.Response = self.client.post(
            "/sign-in", data={**fields, "next": next_path}, follow_redirects=False
        )
        return response

    @property
    def csrf(self) -> str:
        found = _CSRF.search(self.get("/devices").text)
        assert found is not None, "not signed in"
        return found.group(1)

    def post(
        self,
        path: str,
        fields: dict[str, str] | None = None,
        *,
        files: dict[str, tuple[str, bytes]] | None = None,
        csrf: str | None = "session",
    ) -> httpx.Response:
        body = dict(fields or {})
        if csrf == "session":
            body["csrf_token"] = self.csrf
        elif csrf is not None:
            body["csrf_token"] = csrf
        response: httpx.Response = self.client.post(
            path, data=body, files=files, follow_redirects=False
        )
        return response


def element_text(html: str, element_id: str) -> str:
    """The text content of the element with this id, as a browser's textContent gives it."""

    class Finder(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.depth = 0
            self.parts: list[str] = []
            self.found = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if self.depth:
                self.depth += 1
            elif ("id", element_id) in attrs:
                self.depth, self.found = 1, True

        def handle_endtag(self, tag: str) -> None:
            if self.depth:
                self.depth -= 1

        def handle_data(self, data: str) -> None:
            if self.depth:
                self.parts.append(data)

    finder = Finder()
    finder.feed(html)
    assert finder.found, f"no element #{element_id}"
    text = "".join(finder.parts)
    # The HTML parser keeps the newline a <pre> or <textarea> opens with; browsers drop it.
    return text[1:] if text.startswith("\n") else text


def post_forms(html: str) -> list[str]:
    """The actions of the page's forms that post, that is that change something."""
    return re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"', html)


def console_app(data: DataDir, admin: Admin) -> Iterator[FastAPI]:
    """The authority's application over `data`: acme with a policy, a deployer, a viewer."""
    admin.org_create("acme", "local", None, None)
    admin.policy_create("acme", False, [])
    with admin.db.transaction() as s:
        create_account(s, "deployer", PASSWORD)
        create_account(s, "viewer", PASSWORD, role="read-only")
    application = create_app(data)
    yield application
    application.state.db.close()


def browser(app: FastAPI, name: str | None = None) -> Iterator[Console]:
    """A browser on the console, signed in as `name` unless None."""
    with TestClient(app, base_url="https://testserver") as client:
        console = Console(client)
        if name is not None:
            assert console.sign_in(name).status_code == 303
        yield console


def add_fleet(admin: Admin) -> None:
    """acme: one device registered with a backup, one installed whose registration failed."""
    with admin.db.transaction() as s:
        report = DeviceReport(REGISTERED, "laptop-jane", "linux", "0.1.0", "backing_up")
        register(
            s, find_policy(s, "acme"), RegistrationRequest(report, "jane@example.com", "/home/jane")
        )
        device = s.scalars(select(Device).where(Device.guid == REGISTERED)).one()
        finished = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC)
        s.add(
            Snapshot(
                snapshot_id=str(uuid.uuid4()),
                device_id=device.id,
                manifest_id="m" * 64,
                file_count=12,
                byte_count=4096,
                started_at=finished - dt.timedelta(minutes=5),
                finished_at=finished,
            )
        )
        pending = DeviceReport(PENDING, "desk-7", "windows", "0.1.0", "awaiting_registration")
        record_report(s, find_org(s, "acme"), pending)
        for guid, outcome, message in (
            (REGISTERED, "registered", "registered to user 'jane@example.com'"),
            (PENDING, "username_not_email", REFUSAL),
        ):
            record_attempt(
                s,
                org_name="acme",
                device_guid=guid,
                username="jdoe",
                outcome=outcome,
                message=message,
            )


def world(admin: Admin) -> Any:
    """Everything a console form could change."""
    with admin.db.transaction() as s:
        orgs = [(o.name, o.active, o.ldap) for o in list_orgs(s)]
        policies = [
            (p.org.name, p.token, p.manual, p.settings, [x.sha256 for x in p.scripts])
            for p in s.scalars(select(Policy))
        ]
        users = [(u.username, u.password_hash) for u in s.scalars(select(User))]
    return orgs, policies, users
