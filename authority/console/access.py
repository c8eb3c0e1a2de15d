"""Who may see and change what: a session to see, its CSRF token to post, the deploy role to change.

    GET  without a live session          303 /sign-in?next=<the page>
    POST without a live session          303 /sign-in, nothing changed
    POST without the session's token     403 (CSRF_REFUSED), nothing changed
    POST that changes, read-only role    403 naming the role, nothing changed

The dependencies here raise; ConsoleRoute turns what they and the shared code raise
(AuthorityError, a busy database) into pages, so no route repeats it and no traceback or
JSON error reaches a browser.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from authority.admin import Admin
from authority.console.accounts import SESSION_COOKIE, Operator, csrf_valid, operator_for
from authority.console.render import message_page, redirect
from authority.db import Database, utcnow
from authority.errors import AuthorityError

log = logging.getLogger("authority.console")

CSRF_REFUSED = (
    "This form has expired or did not come from this console; reload the page and try again."
)
# Three scripts typed and three uploaded, at most MAX_SCRIPT_BYTES each, and the rest.
MAX_FORM_BYTES = 4 * 1024 * 1024
TITLES = {
    401: "Not signed in",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Too large",
    422: "Not accepted",
    429: "Locked",
    503: "Unavailable",
}


class SignInRequired(Exception):
    """No live session: the browser goes to the sign-in page, then back to `next_path`."""

    def __init__(self, next_path: str | None) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class Refused(Exception):
    """A request the console answers with a page that says why, and changes nothing for."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def role_refused(operator: Operator) -> Refused:
    return Refused(
        403,
        f"Your role, {operator.role}, sees every page but changes nothing: "
        "ask an administrator with the deploy role.",
    )


def local_path(value: str | None) -> str | None:
    """`value` if it is a path of this console, never another site (open redirects)."""
    if not value or len(value) > 2048 or not value.startswith("/"):
        return None
    if value.startswith(("//", "/\\")) or any(c in value for c in "\\\r\n\t\0"):
        return None
    if value.split("?", 1)[0] in ("/sign-in", "/sign-out"):
        return None
    return value


def sign_in_url(next_path: str | None) -> str:
    target = local_path(next_path)
    return f"/sign-in?next={quote(target, safe='/')}" if target else "/sign-in"


def database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def admin(request: Request) -> Admin:
    """The administrator's operations, the CLI's own, over the server's database."""
    operations: Admin = request.app.state.admin
    return operations


def resolve_operator(request: Request) -> Operator | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    with database(request).transaction() as session:
        operator = operator_for(session, cookie, now=utcnow())
    request.state.operator = operator
    return operator


def current_operator(request: Request) -> Operator | None:
    """The operator a dependency already found for this request, for error pages."""
    found: Operator | None = getattr(request.state, "operator", None)
    return found


def viewer(request: Request) -> Operator:
    """Any signed-in operator: every page is for both roles."""
    operator = resolve_operator(request)
    if operator is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target)
    return operator


@dataclass(frozen=True)
class Posted:
    """A form posted by a signed-in operator, its CSRF token checked."""

    operator: Operator
    form: FormData

    def text(self, name: str) -> str:
        value = self.form.get(name)
        return value if isinstance(value, str) else ""

    def checked(self, name: str) -> bool:
        return self.text(name) in ("on", "1", "true", "yes")


async def posted(request: Request) -> AsyncIterator[Posted]:
    # The session first: nobody without one gets a body parsed (or spooled to disk).
    operator = await run_in_threadpool(resolve_operator, request)
    if operator is None:
        raise SignInRequired(None)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_FORM_BYTES:
        raise Refused(413, f"The form is larger than {MAX_FORM_BYTES // (1024 * 1024)} MiB.")
    form = await request.form(max_files=8, max_fields=100)
    submitted = form.get("csrf_token")
    try:
        if not csrf_valid(operator, submitted if isinstance(submitted, str) else None):
            log.warning(
                "console post to %s by %r refused: CSRF token", request.url.path, operator.name
            )
            raise Refused(403, CSRF_REFUSED)
        yield Posted(operator, form)
    finally:
        await form.close()


def deploying(form: Annotated[Posted, Depends(posted)]) -> Posted:
    """A post that changes something: the deploy role only."""
    if not form.operator.can_deploy:
        log.warning(
            "console post to a changing form by %r refused: %s role",
            form.operator.name,
            form.operator.role,
        )
        raise role_refused(form.operator)
    return form


Viewer = Annotated[Operator, Depends(viewer)]
AnyPost = Annotated[Posted, Depends(posted)]
DeployPost = Annotated[Posted, Depends(deploying)]
Operations = Annotated[Admin, Depends(admin)]


class ConsoleRoute(APIRoute):
    """A console route: what it raises becomes a page (module docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired as exc:
                return redirect(sign_in_url(exc.next_path))
            except (Refused, AuthorityError) as exc:
                status, message = exc.status, exc.message
            except OperationalError as exc:
                log.warning("rid=%s database unavailable: %s", _rid(request), exc.orig)
                status, message = 503, "The database is busy; try again in a moment."
            except StarletteHTTPException as exc:
                status, message = exc.status_code, str(exc.detail)
            except Exception:
                log.exception("rid=%s unexpected error on %s", _rid(request), request.url.path)
                status = 503
                message = (
                    f"The console hit an unexpected error (request {_rid(request)}); "
                    "it has been logged."
                )
            else:
                _audit(request, response)
                return response
            return message_page(
                request,
                current_operator(request),
                status,
                TITLES.get(status, "Error"),
                message[:1].upper() + message[1:],
            )

        return guarded


# Posts that change nothing, so they leave no audit line (sign-in has its own lines).
_NOT_CHANGES = ("/sign-in", "/sign-out", "/orgs/test-ldap")


def _audit(request: Request, response: Response) -> None:
    """One line in authority.log per change made in the console: who, what, from where.

    The path names the change (`/orgs/Acme/policy/rotate`); the form's values are never
    logged, since some are secrets (a bind password, a script).
    """
    path = request.url.path
    if request.method != "POST" or response.status_code >= 400:
        return
    if path in _NOT_CHANGES or path.endswith("/policy/load"):
        return
    operator = current_operator(request)
    client = request.client.host if request.client else "-"
    log.info(
        "rid=%s console change %s by %r (%s role) from %s",
        _rid(request),
        path,
        operator.name if operator else "-",
        operator.role if operator else "-",
        client,
    )


def _rid(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


__all__ = [
    "CSRF_REFUSED",
    "AnyPost",
    "ConsoleRoute",
    "DeployPost",
    "Operations",
    "Posted",
    "Refused",
    "SignInRequired",
    "Viewer",
    "admin",
    "current_operator",
    "database",
    "local_path",
    "resolve_operator",
    "sign_in_url",
    "viewer",
]
