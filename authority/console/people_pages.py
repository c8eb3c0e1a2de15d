"""Devices and users: who is protected, who is not and why; users and their password resets.

GET  /devices                          every device; ?org=NAME, ?not_protected=1, ?page=N
GET  /devices/{guid}                   one device, its backups and registration attempts
GET  /users                            every user with its flags; ?org=NAME, ?page=N
GET  /users/{org}/{user}/reset-password   what a reset does; POST resets (Admin)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from authority.attempts import attempt_summary, device_rows, list_attempts
from authority.console.access import (
    ConsoleRoute,
    DeployPost,
    Operations,
    Viewer,
    database,
    role_refused,
)
from authority.console.render import page, path_part
from authority.db import Device, Organization, Snapshot, User
from authority.errors import NotFound
from authority.orgs import list_orgs
from authority.registration import device_summary

router = APIRouter(route_class=ConsoleRoute)

NO_ATTEMPT = "no registration attempt yet"
# Rows a list page shows at once: a fleet of tens of thousands stays a page that loads.
PAGE_ROWS = 500
T = TypeVar("T")


@dataclass(frozen=True)
class Pagination:
    """Where a list page is: rows `first` to `last` of `total`, and the links around it."""

    first: int
    last: int
    total: int
    previous_url: str | None
    next_url: str | None


def paginate(request: Request, rows: list[T], number: int) -> tuple[list[T], Pagination]:
    """Page `number` (from 1; past the end, the last page) of `rows`, PAGE_ROWS a page."""
    pages = max(1, -(-len(rows) // PAGE_ROWS))
    number = min(max(1, number), pages)
    start = (number - 1) * PAGE_ROWS
    shown = rows[start : start + PAGE_ROWS]

    def url(to: int) -> str:  # this page's own path and filters: never another host
        query = {**request.query_params, "page": str(to)}
        return f"{request.url.path}?{urlencode(query)}"

    return shown, Pagination(
        first=start + 1 if shown else 0,
        last=start + len(shown),
        total=len(rows),
        previous_url=url(number - 1) if number > 1 else None,
        next_url=url(number + 1) if number < pages else None,
    )


def last_backups(session: Session) -> dict[str, dt.datetime]:
    """When each device's newest backup finished, by GUID; a device without one is absent."""
    query = (
        select(Device.guid, func.max(Snapshot.finished_at))
        .join(Snapshot, Snapshot.device_id == Device.id)
        .group_by(Device.guid)
    )
    return {guid: finished for guid, finished in session.execute(query)}


def status_of(row: dict[str, Any]) -> str:
    """`registered`, or why not in the authority's last answer (or the agent's last words)."""
    if row["registered"]:
        return "registered"
    attempt = row.get("last_attempt")
    if attempt and not attempt["registered"]:
        reason = attempt["message"]
    else:
        reason = row["last_error"] or NO_ATTEMPT
    return f"installed, not registered: {reason}"


def protection_gap(row: dict[str, Any], last_backup: dt.datetime | None) -> str | None:
    """Why a device is not protected (docs/console.md), or None when it is."""
    if not row["registered"]:
        return "not registered"
    if row["last_error"]:
        return "its last report was an error"
    if last_backup is None:
        return "no backup yet"
    return None


def device_view(row: dict[str, Any], last_backup: dt.datetime | None) -> dict[str, Any]:
    return {
        **row,
        "status": status_of(row),
        "last_backup": last_backup,
        "gap": protection_gap(row, last_backup),
    }


def _org_names(session: Session) -> list[str]:
    return [o.name for o in list_orgs(session)]


@router.get("/devices")
def devices_page(
    request: Request,
    operator: Viewer,
    org: Annotated[str, Query()] = "",
    not_protected: Annotated[str, Query()] = "",
    page_number: Annotated[int, Query(alias="page")] = 1,
) -> Response:
    only_gaps = not_protected in ("1", "on", "true", "yes")
    with database(request).transaction() as session:
        rows = device_rows(session, org or None, pending=False)  # `device list --json`
        backups = last_backups(session)
        org_names = _org_names(session)
    devices = [device_view(row, backups.get(row["guid"])) for row in rows]
    if only_gaps:
        devices = [d for d in devices if d["gap"]]
    devices, pagination = paginate(request, devices, page_number)
    return page(
        request,
        "devices.html",
        operator,
        devices=devices,
        pagination=pagination,
        org=org,
        not_protected=only_gaps,
        org_names=org_names,
    )


@router.get("/devices/{guid}")
def device_page(request: Request, guid: str, operator: Viewer) -> Response:
    with database(request).transaction() as session:
        device = session.scalar(select(Device).where(Device.guid == guid))
        attempts = [attempt_summary(a) for a in list_attempts(session, device=guid, limit=100)]
        row: dict[str, Any] | None = None
        snapshots: list[dict[str, Any]] = []
        if device is not None:
            found = session.scalars(
                select(Snapshot)
                .where(Snapshot.device_id == device.id)
                .order_by(Snapshot.finished_at.desc())
                .limit(10)
            )
            snapshots = [
                {
                    "started_at": s.started_at,
                    "finished_at": s.finished_at,
                    "files": s.file_count,
                    "bytes": s.byte_count,
                }
                for s in found
            ]
            summary = {**device_summary(device), "last_attempt": attempts[0] if attempts else None}
            row = device_view(summary, snapshots[0]["finished_at"] if snapshots else None)
    if row is None and not attempts:
        raise NotFound(f"No device with GUID {guid[:64]!r} has been heard of.")
    return page(
        request,
        "device.html",
        operator,
        guid=guid,
        device=row,
        attempts=attempts,
        snapshots=snapshots,
    )


@router.get("/users")
def users_page(
    request: Request,
    operator: Viewer,
    ops: Operations,
    org: Annotated[str, Query()] = "",
    page_number: Annotated[int, Query(alias="page")] = 1,
) -> Response:
    users, pagination = paginate(request, ops.user_list(org or None), page_number)
    auth = {o["name"]: o["auth"] for o in ops.org_list()}
    return page(
        request,
        "users.html",
        operator,
        pagination=pagination,
        users=[{**u, "auth": auth.get(u["org"], "")} for u in users],
        org=org,
        org_names=sorted(auth),
    )


def _user_exists(session: Session, org: str, username: str) -> None:
    found = session.scalar(
        select(User.id)
        .join(Organization, Organization.id == User.org_id)
        .where(Organization.name == org, User.username == username)
    )
    if found is None:
        raise NotFound(f"No user {username!r} in organization {org!r}.")


@router.get("/users/{org}/{username:path}/reset-password")
def reset_confirm(request: Request, org: str, username: str, operator: Viewer) -> Response:
    if not operator.can_deploy:
        raise role_refused(operator)
    with database(request).transaction() as session:
        _user_exists(session, org, username)
    where = f"/users/{path_part(org)}/{path_part(username)}/reset-password"
    return page(
        request,
        "confirm.html",
        operator,
        title=f"Reset the password of {username} ({org})?",
        consequences=[
            "The user gets a new password, shown to you once on the next page; the old one "
            "stops working at once.",
            "A sign-in lockout of the user ends. Pass the new password on securely.",
        ],
        action=where,
        confirm_label="Reset the password",
        cancel=f"/users?org={path_part(org)}",
    )


@router.post("/users/{org}/{username:path}/reset-password")
def reset_password(
    request: Request, org: str, username: str, form: DeployPost, ops: Operations
) -> Response:
    who, password = ops.user_new_password(username, org)
    return page(request, "password.html", form.operator, who=who, password=password, org=org)


__all__ = ["device_view", "last_backups", "protection_gap", "router", "status_of"]
