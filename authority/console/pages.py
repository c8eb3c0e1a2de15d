"""The console's router: signing in and out, its two assets, and the pages of the other modules.

    GET  /                   303 /devices (or /sign-in)
    GET  /sign-in            the form; sets the pre-session token cookie (double submit)
    POST /sign-in            303 to `next`, with the session cookie
    POST /sign-out           303 /sign-in, the session ended
    GET  /console/static/... console.css, console.js

Organizations: org_pages.py; policies: policy_pages.py; devices and users: people_pages.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from authority.console import org_pages, people_pages, policy_pages
from authority.console.access import (
    AnyPost,
    ConsoleRoute,
    Refused,
    database,
    local_path,
    resolve_operator,
)
from authority.console.accounts import (
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    new_sign_in_token,
    sign_in,
    sign_in_token_valid,
    sign_out,
)
from authority.console.render import message_page, page, redirect, secure
from authority.db import utcnow
from authority.errors import AuthorityError, TooManyAttempts, Unauthorized

STATIC = Path(__file__).with_name("static")
ASSETS = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
HOME = "/devices"

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


def _set_cookie(response: Response, name: str, value: str) -> None:
    response.set_cookie(name, value, path="/", secure=True, httponly=True, samesite="strict")


@router.get("/")
def home(request: Request) -> Response:
    return redirect(HOME if resolve_operator(request) else "/sign-in")


def _sign_in_page(
    request: Request, *, name: str, next_path: str, error: str | None, status: int
) -> Response:
    token = new_sign_in_token()
    response = page(
        request,
        "sign_in.html",
        None,
        status,
        sign_in_token=token,
        next_path=local_path(next_path) or "",
        name=name,
        error=error,
    )
    _set_cookie(response, SIGN_IN_COOKIE, token)
    return response


@router.get("/sign-in")
def sign_in_form(request: Request, next: Annotated[str, Query()] = "") -> Response:
    if resolve_operator(request) is not None:
        return redirect(local_path(next) or HOME)
    return _sign_in_page(request, name="", next_path=next, error=None, status=200)


async def _sign_in_form(request: Request) -> dict[str, str]:
    form = await request.form(max_files=0, max_fields=10)
    try:
        return {k: v for k, v in form.items() if isinstance(v, str)}
    finally:
        await form.close()


@router.post("/sign-in")
def sign_in_post(
    request: Request, fields: Annotated[dict[str, str], Depends(_sign_in_form)]
) -> Response:
    name = fields.get("name", "").strip()
    next_path = fields.get("next", "")
    if not sign_in_token_valid(request.cookies.get(SIGN_IN_COOKIE), fields.get("csrf_token")):
        return _sign_in_page(
            request,
            name=name,
            next_path=next_path,
            error="This sign-in form has expired or did not come from this console; try again.",
            status=403,
        )
    client = request.client.host if request.client else "-"
    failure: AuthorityError | None = None
    with database(request).transaction() as session:
        try:
            cookie, _operator = sign_in(
                session, name, fields.get("password", ""), now=utcnow(), client=client
            )
        except (Unauthorized, TooManyAttempts) as exc:
            failure = exc  # answered below, after this transaction (the count is apart)
    if failure is not None:
        message = (
            f"{failure.message[:1].upper()}{failure.message[1:]}."
            if isinstance(failure, TooManyAttempts)
            else "The name or the password is wrong."
        )
        return _sign_in_page(
            request, name=name, next_path=next_path, error=message, status=failure.status
        )
    response = redirect(local_path(next_path) or HOME)
    _set_cookie(response, SESSION_COOKIE, cookie)
    response.delete_cookie(SIGN_IN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.post("/sign-out")
def sign_out_post(request: Request, form: AnyPost) -> Response:
    with database(request).transaction() as session:
        sign_out(session, request.cookies.get(SESSION_COOKIE))
    response = redirect("/sign-in?done=signed-out")
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.get("/console/static/{name}")
def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise Refused(404, "There is no such file.")
    return secure(Response((STATIC / name).read_bytes(), media_type=media_type))


router.include_router(policy_pages.router)  # before org_pages: its /orgs/{org} takes any path
router.include_router(org_pages.router)
router.include_router(people_pages.router)


def not_found_page(request: Request, status: int, headers: Mapping[str, str] | None) -> Response:
    """What a browser gets for an address outside the API that nothing serves (404, 405).

    Called from the application's error handler, in a worker thread (it reads the session).
    """
    operator = resolve_operator(request)
    if status == 405:
        return message_page(
            request,
            operator,
            405,
            "Not here",
            "This address does not answer this kind of request; follow the console's links "
            "and forms.",
            headers=headers,
        )
    return message_page(
        request, operator, status, "Not found", "There is no such page.", headers=headers
    )


__all__ = ["not_found_page", "router"]
