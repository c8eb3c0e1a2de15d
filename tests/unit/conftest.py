"""Fixtures shared by the unit tests: a schema'd SQLite database and an initialised data folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from authority.admin import Admin, init_data
from authority.datadir import DataDir
from authority.db import Database, create_schema
from authority.orgs import LdapSettings, create_org
from authority.policies import create_policy

MakePolicy = Callable[..., str]


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """An empty authority database in a temporary SQLite file."""
    db = Database(f"sqlite:///{tmp_path / 'authority.db'}")
    create_schema(db.engine)
    yield db
    db.close()


@pytest.fixture
def make_policy(database: Database) -> MakePolicy:
    """Create an organization with a deployment policy; returns the policy's token."""

    def make(name: str, auth: str = "local", *, manual: bool = False) -> str:
        ldap = (
            LdapSettings(url="ldaps://ldap.example.com", base_dn="dc=example,dc=com")
            if auth == "ldap"
            else None
        )
        with database.transaction() as s:
            create_org(s, name, auth, ldap=ldap)
            return create_policy(s, name, manual=manual, scripts=[]).token

    return make


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    """A data folder initialised as `holdfast-authority init --host 127.0.0.1` would."""
    folder = DataDir(tmp_path / "d")
    init_data(folder, "127.0.0.1", 4285)
    return folder


@pytest.fixture
def admin(data: DataDir) -> Iterator[Admin]:
    """The administrator's operations over `data`, its database closed afterwards."""
    with Admin(data) as ops:
        yield ops
