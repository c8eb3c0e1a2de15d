"""What routes share: the database with transient-error mapping, the server's settings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from fastapi import Request
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from authority.datadir import DataDir
from authority.db import Database
from authority.errors import Unauthorized, Unavailable
from authority.tls import CertificateStore

log = logging.getLogger("authority")
T = TypeVar("T")

ATTEMPTS = 3


def run_in_transaction(request: Request, work: Callable[[Session], T]) -> T:
    """Run `work` in one transaction, retried when a concurrent writer got there first.

    Two agents registering the same GUID at once collide on a unique index; the second
    attempt then finds the first one's row and takes the idempotent path. A database that
    stays locked is a transient condition for agents: 503 with Retry-After.
    """
    db: Database = request.app.state.db
    retry_after: int = request.app.state.limits.retry_after
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with db.transaction() as session:
                return work(session)
        except IntegrityError:
            if attempt == ATTEMPTS:
                raise
            log.info("rid=%s write conflict, retrying (attempt %d)", request_id(request), attempt)
        except OperationalError as exc:
            log.warning("rid=%s database unavailable: %s", request_id(request), exc.orig)
            raise Unavailable(
                "the authority's database is busy; retry later",
                code="database_busy",
                retry_after=retry_after,
            ) from exc
    raise AssertionError("unreachable")


def bearer_credential(authorization: str | None) -> str | None:
    """The device credential of `Authorization: Bearer <credential>`, None when absent."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized(
            "expected `Authorization: Bearer <device credential>`", code="credential_missing"
        )
    return value.strip()


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


def certs(request: Request) -> CertificateStore:
    store: CertificateStore = request.app.state.certs
    return store


def data_dir(request: Request) -> DataDir:
    data: DataDir = request.app.state.data
    return data


__all__ = ["bearer_credential", "certs", "data_dir", "request_id", "run_in_transaction"]
