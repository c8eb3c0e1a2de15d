"""The console's pages: signing in and out, cookies, headers, assets, unknown addresses.

What each page shows is in test_views.py, the forms that change things in test_forms.py and
test_policy_forms.py; accounts and sessions themselves (expiry, lockout arithmetic) in
tests/unit/test_console_accounts.py. The browser (Console) is in client.py, the fixtures in
conftest.py.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from authority.admin import Admin
from authority.console.accounts import SESSION_COOKIE, SIGN_IN_COOKIE
from authority.console.render import SECURITY_HEADERS
from authority.db import ConsoleSession
from tests.unit.console.client import PASSWORD, Console

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
