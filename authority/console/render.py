"""Console pages as HTML: the Jinja2 environment (autoescaped) and the headers every page carries.

Templates get the operator (None before sign-in), the request's path, and the notice a
redirect after a successful form asked for (`?done=KEY`, from the fixed NOTICES: a link
cannot make the console say arbitrary things).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from authority.console.accounts import Operator

TEMPLATES = Path(__file__).with_name("templates")

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

NOTICES = {
    "org-created": "Organization created.",
    "org-deactivated": "Organization deactivated: its deployment policy no longer works.",
    "policy-created": "Policy created. Its installer arguments are below.",
    "settings-saved": "Settings saved. Agents receive them at their next policy check.",
    "token-rotated": "New token generated. Deploy with the installer arguments below; "
    "installs not yet registered with the old token stop working until redeployed.",
    "policy-deleted": "Policy deleted: its token no longer works.",
    "signed-out": "You have signed out.",
}


def _when(value: str | dt.datetime | None) -> str:
    """A stored time as administrators read it: UTC, to the minute."""
    if value is None or value == "":
        return "-"
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    if count < 1024:
        return f"{count} bytes"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


def path_part(value: str) -> str:
    """`value` as one segment of a console address (an organization's name may hold a /)."""
    return quote(value, safe="")


_environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=StrictUndefined,  # a misspelt variable is an error in tests, not an empty cell
    trim_blocks=True,
    lstrip_blocks=True,
)
_environment.filters["when"] = _when
_environment.filters["size"] = _size
_environment.filters["pathpart"] = path_part


def secure(response: Response) -> Response:
    """Add the console's security headers (docs/console.md) to any response of it."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def render(request: Request, template: str, operator: Operator | None, **context: Any) -> str:
    notice = NOTICES.get(request.query_params.get("done", ""))
    return _environment.get_template(template).render(
        operator=operator, path=request.url.path, notice=notice, **context
    )


def page(
    request: Request,
    template: str,
    operator: Operator | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The rendered template as a response with the console's headers."""
    response = HTMLResponse(render(request, template, operator, **context), status)
    secure(response)
    return response


def redirect(url: str) -> RedirectResponse:
    """303 See Other: after a form, the browser GETs the result (post/redirect/get)."""
    response = RedirectResponse(url, status_code=303)
    secure(response)
    return response


def message_page(
    request: Request,
    operator: Operator | None,
    status: int,
    title: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """A page that only says something: a refusal, an unknown page, an error."""
    response = page(request, "message.html", operator, status, title=title, message=message)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


__all__ = [
    "NOTICES",
    "SECURITY_HEADERS",
    "message_page",
    "page",
    "path_part",
    "redirect",
    "render",
    "secure",
]
