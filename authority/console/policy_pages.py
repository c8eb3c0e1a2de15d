"""An organization's deployment policy: everything in it, its creation, settings, token, deletion.

GET  /orgs/{org}/policy            the policy; while there is none, the creation form
POST /orgs/{org}/policy            create (Admin.policy_create_with: `policy create`)
POST /orgs/{org}/policy/load       the creation form again, a shipped script in an editor
POST /orgs/{org}/policy/settings   KEY=VALUE lines (Admin.policy_set: `policy set`)
GET  /orgs/{org}/policy/rotate     what a new token does; POST makes it
GET  /orgs/{org}/policy/delete     what deleting does; POST deletes
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from authority.admin import Admin
from authority.console.access import (
    ConsoleRoute,
    DeployPost,
    Operations,
    Viewer,
    admin,
    database,
    role_refused,
)
from authority.console.accounts import Operator
from authority.console.forms import (
    OS_LABELS,
    ScriptEntry,
    in_form_words,
    script_entries,
    settings_lines,
    shipped_scripts,
)
from authority.console.render import page, path_part, redirect
from authority.errors import AuthorityError, InvalidInput, NotFound
from authority.policies import find_policy
from authority.scripts import OPERATING_SYSTEMS, ScriptFile
from authority.settings import SETTINGS
from authority.views import json_value

router = APIRouter(route_class=ConsoleRoute)

ROTATE_CONSEQUENCES = [
    "Installs not yet registered with the old token will stop working until redeployed with "
    "the new arguments; registered devices are not affected.",
    "The old token stops working at once. The installer arguments on the policy page change "
    "to carry the new token: use those from now on.",
]
DELETE_CONSEQUENCES = [
    "Its token stops working at once: installs not yet registered with it can no longer "
    "fetch a policy or register until redeployed with another policy's arguments.",
    "Registered devices are not unregistered: they keep backing up, with default settings.",
    "A new policy can be created afterwards; it gets a new token.",
]


def _policy_url(org: str) -> str:
    return f"/orgs/{path_part(org)}/policy"


def _scripts(request: Request, org: str, view: dict[str, Any]) -> list[dict[str, Any]]:
    """Each OS's script as the view describes it, with its text; an OS without one too."""
    with database(request).transaction() as session:
        texts = {s.os: s.content for s in find_policy(session, org).scripts}
    described = {s["os"]: s for s in view["scripts"]}
    empty: dict[str, Any] = {"filename": None, "interpreter": [], "sha256": None}
    return [
        {
            **described.get(os_name, empty),
            "os": os_name,
            "label": OS_LABELS[os_name],
            "content": texts.get(os_name, ""),
        }
        for os_name in OPERATING_SYSTEMS
    ]


def _policy_page(
    request: Request,
    operator: Operator,
    org: str,
    *,
    settings_text: str = "",
    settings_error: str | None = None,
    status: int = 200,
) -> Response:
    view = admin(request).policy_show(org)  # the CLI's `policy show --json`
    settings = [
        {"key": key, "value": json_value(value), "doc": SETTINGS[key].doc}
        for key, value in view["settings"].items()
    ]
    return page(
        request,
        "policy.html",
        operator,
        status,
        view=view,
        scripts=_scripts(request, org, view),
        settings=settings,
        settings_text=settings_text,
        settings_error=settings_error,
    )


def _create_page(
    request: Request,
    operator: Operator,
    org: str,
    *,
    entries: list[ScriptEntry] | None = None,
    registration: str = "silent",
    error: str | None = None,
    status: int = 200,
) -> Response:
    return page(
        request,
        "policy_create.html",
        operator,
        status,
        org=org,
        entries=entries or script_entries(None),
        registration=registration,
        shipped=shipped_scripts(),
        error=error,
    )


def _has_policy(ops: Admin, org: str) -> bool:
    """Whether the organization has a policy; an unknown organization is NotFound."""
    with ops.db.transaction() as session:
        try:
            find_policy(session, org)
        except NotFound as exc:
            if exc.code != "policy_not_found":
                raise
            return False
    return True


@router.get("/orgs/{org:path}/policy")
def policy_page(
    request: Request,
    org: str,
    operator: Viewer,
    ops: Operations,
    load: Annotated[str, Query()] = "",
) -> Response:
    if _has_policy(ops, org):
        return _policy_page(request, operator, org)
    entries = script_entries(None)
    error = None
    # ?load=linux&shipped_linux=fixed_user.sh: a link straight to a loaded editor.
    for entry in entries:
        if entry.os == load and operator.can_deploy:
            entry.shipped = request.query_params.get(f"shipped_{entry.os}", "")
            try:
                entry.load_shipped()
            except InvalidInput as exc:
                error = in_form_words(exc.message)
    return _create_page(request, operator, org, entries=entries, error=error)


def _registration(text: str) -> str:
    if text not in ("silent", "manual"):
        raise InvalidInput(f"registration {text[:40]!r}: choose silent or manual")
    return text


def _read_scripts(entries: list[ScriptEntry]) -> list[ScriptFile]:
    """Every OS's script, each checked, so one page shows every problem at once."""
    scripts: list[ScriptFile] = []
    problems: list[str] = []
    for entry in entries:
        try:
            script = entry.script()
        except InvalidInput as exc:
            problems.append(in_form_words(exc.message))
            continue
        if script is not None:
            scripts.append(script)
    if problems:
        raise InvalidInput("; ".join(problems))
    return scripts


@router.post("/orgs/{org:path}/policy/load")
def load_script(request: Request, org: str, form: DeployPost, ops: Operations) -> Response:
    if _has_policy(ops, org):
        return redirect(_policy_url(org))
    entries = script_entries(form)
    problems = []
    for entry in entries:
        try:
            entry.take_upload()
            if entry.os == form.text("load"):
                entry.load_shipped()
        except InvalidInput as exc:
            problems.append(in_form_words(exc.message))
    return _create_page(
        request,
        form.operator,
        org,
        entries=entries,
        registration=form.text("registration") or "silent",
        error="; ".join(problems) or None,
        status=422 if problems else 200,
    )


@router.post("/orgs/{org:path}/policy")
def create_policy(request: Request, org: str, form: DeployPost, ops: Operations) -> Response:
    entries = script_entries(form)
    registration = form.text("registration") or "silent"
    try:
        manual = _registration(registration) == "manual"
        ops.policy_create_with(org, manual, _read_scripts(entries))
    except AuthorityError as exc:
        if isinstance(exc, NotFound):
            raise  # no such organization: nothing to show the form again for
        return _create_page(
            request,
            form.operator,
            org,
            entries=entries,
            registration=registration,
            error=in_form_words(exc.message),
            status=exc.status,
        )
    return redirect(f"{_policy_url(org)}?done=policy-created")


@router.post("/orgs/{org:path}/policy/settings")
def save_settings(request: Request, org: str, form: DeployPost, ops: Operations) -> Response:
    text = form.text("settings")
    try:
        ops.policy_set(org, settings_lines(text))
    except AuthorityError as exc:
        if isinstance(exc, NotFound):
            raise
        return _policy_page(
            request,
            form.operator,
            org,
            settings_text=text,
            settings_error=in_form_words(exc.message),
            status=exc.status,
        )
    return redirect(f"{_policy_url(org)}?done=settings-saved")


def _confirm(
    request: Request,
    operator: Operator,
    ops: Admin,
    org: str,
    *,
    action: str,
    title: str,
    consequences: list[str],
    confirm_label: str,
) -> Response:
    if not operator.can_deploy:
        raise role_refused(operator)
    with ops.db.transaction() as session:
        find_policy(session, org)  # NotFound: nothing to confirm
    return page(
        request,
        "confirm.html",
        operator,
        title=title,
        consequences=consequences,
        action=f"{_policy_url(org)}/{action}",
        confirm_label=confirm_label,
        cancel=_policy_url(org),
    )


@router.get("/orgs/{org:path}/policy/rotate")
def rotate_confirm(request: Request, org: str, operator: Viewer, ops: Operations) -> Response:
    return _confirm(
        request,
        operator,
        ops,
        org,
        action="rotate",
        title=f"Generate a new token for the policy of {org}?",
        consequences=ROTATE_CONSEQUENCES,
        confirm_label="Generate new token",
    )


@router.post("/orgs/{org:path}/policy/rotate")
def rotate(org: str, form: DeployPost, ops: Operations) -> Response:
    ops.policy_rotate(org)
    return redirect(f"{_policy_url(org)}?done=token-rotated")


@router.get("/orgs/{org:path}/policy/delete")
def delete_confirm(request: Request, org: str, operator: Viewer, ops: Operations) -> Response:
    return _confirm(
        request,
        operator,
        ops,
        org,
        action="delete",
        title=f"Delete the deployment policy of {org}?",
        consequences=DELETE_CONSEQUENCES,
        confirm_label="Delete the policy",
    )


@router.post("/orgs/{org:path}/policy/delete")
def delete(org: str, form: DeployPost, ops: Operations) -> Response:
    ops.policy_delete(org)
    return redirect(f"/orgs/{path_part(org)}?done=policy-deleted")


__all__ = ["DELETE_CONSEQUENCES", "ROTATE_CONSEQUENCES", "router"]
