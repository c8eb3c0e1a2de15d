"""Organizations: the list with the create form and its LDAP test, one organization, deactivation.

GET  /orgs                      every organization; create form (deploy role)
POST /orgs                      create (Admin.org_create, the CLI's `org create`)
POST /orgs/test-ldap            bind and search once with the form's LDAP settings
GET  /orgs/{org}/deactivate     what deactivating does; POST does it
GET  /orgs/{org}                one organization and its LDAP settings
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import func, select

from authority.console.access import (
    ConsoleRoute,
    DeployPost,
    Operations,
    Refused,
    Viewer,
    database,
    role_refused,
)
from authority.console.accounts import Operator
from authority.console.forms import OrgForm, in_form_words
from authority.console.render import page, path_part, redirect
from authority.db import Device, User
from authority.errors import AuthorityError, InvalidInput
from authority.orgs import LdapSettings, find_org, list_orgs, org_summary

router = APIRouter(route_class=ConsoleRoute)


def org_list(request: Request) -> list[dict[str, Any]]:
    """Every organization as `org list --json` gives it, with its number of devices."""
    with database(request).transaction() as session:
        counts: dict[int, int] = {
            org_id: count
            for org_id, count in session.execute(
                select(Device.org_id, func.count(Device.id)).group_by(Device.org_id)
            )
        }
        return [{**org_summary(o), "devices": counts.get(o.id, 0)} for o in list_orgs(session)]


def _orgs_page(
    request: Request,
    operator: Operator,
    *,
    form: OrgForm | None = None,
    error: str | None = None,
    ldap_result: str | None = None,
    ldap_error: str | None = None,
    status: int = 200,
) -> Response:
    return page(
        request,
        "orgs.html",
        operator,
        status,
        orgs=org_list(request),
        form=(form or OrgForm()).without_secrets(),
        error=error,
        ldap_result=ldap_result,
        ldap_error=ldap_error,
    )


@router.get("/orgs")
def orgs_page(request: Request, operator: Viewer) -> Response:
    return _orgs_page(request, operator)


@router.post("/orgs")
def create_org(request: Request, form: DeployPost, admin: Operations) -> Response:
    entered = OrgForm.read(form)
    try:
        admin.org_create(
            entered.name,
            entered.auth,
            entered.parent or None,
            entered.ldap_for_create(),
            entered.secrets(),
        )
    except AuthorityError as exc:
        return _orgs_page(
            request,
            form.operator,
            form=entered,
            error=in_form_words(exc.message),
            status=exc.status,
        )
    return redirect(f"/orgs/{path_part(entered.name)}?done=org-created")


@router.post("/orgs/test-ldap")
def test_ldap(request: Request, form: DeployPost, admin: Operations) -> Response:
    entered = OrgForm.read(form)
    try:
        result = admin.org_test_ldap(entered.ldap(), entered.secrets())
    except InvalidInput as exc:
        return _orgs_page(
            request,
            form.operator,
            form=entered,
            ldap_error=in_form_words(exc.message),
            status=exc.status,
        )
    except AuthorityError as exc:
        # The settings are usable; the directory did not answer as hoped. The page worked.
        return _orgs_page(
            request, form.operator, form=entered, ldap_error=f"Not connected: {exc.message}"
        )
    return _orgs_page(request, form.operator, form=entered, ldap_result=result)


@router.get("/orgs/{org:path}/deactivate")
def deactivate_confirm(request: Request, org: str, operator: Viewer) -> Response:
    if not operator.can_deploy:
        raise role_refused(operator)
    with database(request).transaction() as session:
        active = find_org(session, org).active
    if not active:
        raise Refused(409, f"Organization {org!r} is already deactivated.")
    return page(
        request,
        "confirm.html",
        operator,
        title=f"Deactivate organization {org}?",
        consequences=[
            "Its deployment policy stops working at once: installs carrying its token can no "
            "longer fetch the policy or register, and keep retrying.",
            "Its registered devices can no longer fetch the policy.",
            "There is no command to reactivate an organization yet: deactivate only when "
            "you mean it.",
        ],
        action=f"/orgs/{path_part(org)}/deactivate",
        confirm_label="Deactivate the organization",
        cancel=f"/orgs/{path_part(org)}",
    )


@router.post("/orgs/{org:path}/deactivate")
def deactivate(org: str, form: DeployPost, admin: Operations) -> Response:
    admin.org_deactivate(org)
    return redirect(f"/orgs/{path_part(org)}?done=org-deactivated")


@router.get("/orgs/{org:path}")
def org_page(request: Request, org: str, operator: Viewer) -> Response:
    with database(request).transaction() as session:
        found = find_org(session, org)
        summary = org_summary(found)
        ldap = LdapSettings.from_dict(found.ldap).as_dict() if found.ldap else None
        devices = session.scalar(select(func.count(Device.id)).where(Device.org_id == found.id))
        users = session.scalar(select(func.count(User.id)).where(User.org_id == found.id))
    return page(request, "org.html", operator, org=summary, ldap=ldap, devices=devices, users=users)


__all__ = ["org_list", "router"]
