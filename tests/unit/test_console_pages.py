"""The console's pages: signing in and out, cookies, headers, assets, unknown addresses.

What each page shows is in test_console_views.py, the forms that change things in
test_console_forms.py and test_console_policy_forms.py; accounts and sessions themselves
(expiry, lockout arithmetic) in test_console_accounts.py. The browser (Console) and the
fixtures' builders here are theirs too.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
import warnings
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from authority.admin import Admin
from authority.app import create_app
from authority.attempts import record_attempt
from authority.console.accounts import SESSION_COOKIE, SIGN_IN_COOKIE, create_account
from authority.console.render import SECURITY_HEADERS
from authority.datadir import DataDir
from authority.db import ConsoleSession, Device, Snapshot
from authority.orgs import find_org
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
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Console:
    """A browser on the console: its cookies, and the CSRF token its pages carry."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, follow_redirects=False, **kwargs)

    def sign_in(self, name: str, password: str = PASSWORD, next_path: str = "") -> httpx.Response:
        form = self.get("/sign-in")
        token = _CSRF.search(form.text)
        assert token is not None
        fields = {"name": name, "password": password, "csrf_token": token.group(1)}
        return self.client.post(
            "/sign-in", data={**fields, "next": next_path}, follow_redirects=False
        )

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
        return self.client.post(path, data=body, files=files, follow_redirects=False)


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


@pytest.fixture
def app(data: DataDir, admin: Admin) -> Iterator[FastAPI]:
    yield from console_app(data, admin)


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[Console]:
    yield from browser(app)


@pytest.fixture
def deployer(app: FastAPI) -> Iterator[Console]:
    yield from browser(app, "deployer")


@pytest.fixture
def viewer(app: FastAPI) -> Iterator[Console]:
    yield from browser(app, "viewer")


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


@pytest.fixture
def fleet(admin: Admin) -> None:
    add_fleet(admin)


# Signing in and out


@pytest.mark.parametrize("path", ["/devices", "/orgs", "/orgs/acme/policy", "/users?org=acme"])
def test_a_page_without_a_session_redirects_to_sign_in_and_back(
    anonymous: Console, path: str
) -> None:
    response = anonymous.get(path)
    assert response.status_code == 303
    assert (
        response.headers["location"]
        == f"/sign-in?next={path.replace('?', '%3F').replace('=', '%3D')}"
    )
    signed_in = anonymous.sign_in("deployer", next_path=path)
    assert signed_in.headers["location"] == path


def test_the_root_sends_a_signed_in_operator_to_the_devices(
    anonymous: Console, deployer: Console
) -> None:
    assert anonymous.get("/").headers["location"] == "/sign-in"
    assert deployer.get("/").headers["location"] == "/devices"


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/x", "/\\evil", "devices"]
)
def test_sign_in_only_returns_to_a_path_of_this_console(anonymous: Console, target: str) -> None:
    assert anonymous.sign_in("deployer", next_path=target).headers["location"] == "/devices"


def test_the_session_cookie_is_secure_httponly_and_strict(anonymous: Console) -> None:
    form = anonymous.get("/sign-in")
    signin_cookie = form.headers["set-cookie"]
    assert signin_cookie.startswith(f"{SIGN_IN_COOKIE}=")
    response = anonymous.sign_in("deployer")
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)
    )
    for flag in ("Secure", "HttpOnly", "SameSite=strict", "Path=/"):
        assert flag in cookie
    for cookie_header in (signin_cookie, cookie):
        assert "Secure" in cookie_header and "HttpOnly" in cookie_header


def test_sign_out_ends_the_session(deployer: Console, admin: Admin) -> None:
    response = deployer.post("/sign-out")
    assert response.status_code == 303
    assert response.headers["location"] == "/sign-in?done=signed-out"
    assert "You have signed out." in deployer.get("/sign-in?done=signed-out").text
    assert deployer.get("/devices").status_code == 303
    with admin.db.transaction() as s:
        assert s.scalars(select(ConsoleSession)).all() == []


def test_a_sign_in_form_without_its_token_is_refused(anonymous: Console) -> None:
    response = anonymous.client.post(
        "/sign-in", data={"name": "deployer", "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 403
    cookies = response.headers.get_list("set-cookie")
    assert not any(c.startswith(f"{SESSION_COOKIE}=") for c in cookies)
    assert anonymous.get("/devices").status_code == 303


def test_a_wrong_name_and_a_wrong_password_read_the_same(anonymous: Console) -> None:
    wrong_password = anonymous.sign_in("deployer", "not the password at all")
    wrong_name = anonymous.sign_in("nobody", PASSWORD)
    for response in (wrong_password, wrong_name):
        assert response.status_code == 401
        assert (
            '<p class="error" role="alert">The name or the password is wrong.</p>' in response.text
        )
        assert PASSWORD not in response.text
    assert 'value="deployer"' in wrong_password.text  # the name is kept, never the password


def test_repeated_failures_lock_the_account_and_the_page_says_until_when(
    anonymous: Console,
) -> None:
    for _ in range(4):
        assert anonymous.sign_in("deployer", "wrong password!").status_code == 401
    locked = anonymous.sign_in("deployer", "wrong password!")
    assert locked.status_code == 429
    assert re.search(r"locked until \d\d:\d\d UTC", locked.text)
    assert anonymous.sign_in("deployer").status_code == 429  # even the right password


# Headers, assets, unknown addresses


def test_every_console_response_carries_the_security_headers(
    anonymous: Console, deployer: Console
) -> None:
    responses = [
        anonymous.get("/sign-in"),
        anonymous.get("/devices"),
        anonymous.get("/no-such-page"),
        deployer.get("/devices"),
        deployer.get("/orgs/acme/policy"),
        deployer.get("/console/static/console.js"),
        deployer.post("/sign-out"),
    ]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value, (response.url, name)


def test_pages_fetch_nothing_from_elsewhere(deployer: Console) -> None:
    for path in ("/devices", "/orgs", "/orgs/acme", "/orgs/acme/policy", "/users"):
        html = deployer.get(path).text
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', html):
            assert url.startswith(("/", "#")), (path, url)
    assert (
        deployer.get("/console/static/console.css").headers["content-type"].startswith("text/css")
    )
    script = deployer.get("/console/static/console.js")
    assert (
        "navigator.clipboard" in script.text and "data-copy" not in script.text.split("closest")[0]
    )


def test_an_unknown_console_path_is_an_html_page_and_the_api_stays_json(
    deployer: Console,
) -> None:
    page = deployer.get("/no-such-page")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="sign-out"' in page.text  # the page of a signed-in operator
    api = deployer.get("/api/v1/nope")
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "no_such_endpoint"
    wrong_method = deployer.client.put("/devices")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"].startswith("text/html")
    assert deployer.get("/console/static/secrets.txt").status_code == 404


def test_an_unknown_organization_is_a_404_page(deployer: Console) -> None:
    response = deployer.get("/orgs/nope")
    assert response.status_code == 404
    assert "No organization named &#39;nope&#39;" in response.text
    assert "Traceback" not in response.text
