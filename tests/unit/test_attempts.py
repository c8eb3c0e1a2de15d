"""Registration attempts: what is recorded, for whom, and how much is kept."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from authority.attempts import (
    KEPT_PER_DEVICE,
    attempt_summary,
    latest_attempts,
    list_attempts,
    org_for_token,
    record_apart,
    record_attempt,
)
from authority.db import Database, RegistrationAttempt
from authority.policies import rotate_token
from tests.unit.conftest import MakePolicy

GUID = "0b7e4b56-4f0e-4d7c-9a55-2c1d3e4f5a6b"


def record(database: Database, token: str | None, outcome: str, guid: str = GUID) -> None:
    record_apart(
        database, token, device_guid=guid, username="ann", outcome=outcome, message=outcome
    )


def count(database: Database) -> int:
    with database.transaction() as s:
        return s.scalar(select(func.count()).select_from(RegistrationAttempt)) or 0


def test_an_attempt_is_recorded_under_the_organization_its_token_names(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    record(database, token, "directory_user_not_found", guid=GUID.upper())
    with database.transaction() as s:
        [summary] = [attempt_summary(a) for a in list_attempts(s)]
    assert summary["org"] == "Acme"
    assert summary["device_guid"] == GUID  # normalised, so --device finds it
    assert (summary["outcome"], summary["registered"]) == ("directory_user_not_found", False)


def test_a_retired_token_still_names_its_organization(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    with database.transaction() as s:
        rotate_token(s, "Acme")
        assert org_for_token(s, token) == "Acme"


def test_a_token_never_issued_here_records_nothing(database: Database) -> None:
    for token in (None, "", "not-a-uuid", str(uuid.uuid4())):
        record(database, token, "token_unknown")
    assert count(database) == 0


def test_each_device_keeps_only_its_latest_attempts(
    database: Database, make_policy: MakePolicy
) -> None:
    make_policy("Acme")
    other = str(uuid.uuid4())
    with database.transaction() as s:
        for n in range(KEPT_PER_DEVICE + 5):
            record_attempt(
                s, org_name="Acme", device_guid=GUID, username="a", outcome=f"n{n}", message=""
            )
        record_attempt(s, org_name="Acme", device_guid=other, username="b", outcome="x", message="")
    with database.transaction() as s:
        kept = list_attempts(s, device=GUID, limit=1000)
        latest = latest_attempts(s, [GUID, other, str(uuid.uuid4())])
    assert len(kept) == KEPT_PER_DEVICE
    assert kept[0].outcome == f"n{KEPT_PER_DEVICE + 4}"  # newest first
    assert {guid: a.outcome for guid, a in latest.items()} == {
        GUID: f"n{KEPT_PER_DEVICE + 4}",
        other: "x",
    }


def test_a_database_that_fails_never_fails_the_request_being_recorded(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    with database.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE registration_attempts")
    record(database, token, "registered")  # logged, not raised
