"""Read-only admin API, authenticated by the admin key that `init` wrote (DATA/admin.key)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Header, Request
from sqlalchemy.orm import Session

from authority.api.deps import data_dir, run_in_transaction
from authority.attempts import device_rows
from authority.errors import Unauthorized

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


def _require_admin(request: Request, authorization: str | None) -> None:
    expected = data_dir(request).admin_key.read_text("utf-8").strip()
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), expected):
        raise Unauthorized("admin key missing or wrong", code="admin_key_invalid")


@router.get("/devices")
def list_devices(
    request: Request, pending: bool = False, authorization: str | None = Header(None)
) -> list[dict[str, Any]]:
    """Every device the authority knows; `pending=true` for installed but unregistered ones."""
    _require_admin(request, authorization)

    def work(session: Session) -> list[dict[str, Any]]:
        return device_rows(session, None, pending)

    return run_in_transaction(request, work)


__all__ = ["router"]
