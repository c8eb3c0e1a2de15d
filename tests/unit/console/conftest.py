"""Fixtures of the console tests: the application, browsers signed in or not, and a fleet.

`deployer`, `viewer` and `anonymous` browse whatever `app` a module gives; a module whose
forms need acme's fleet and the organization "beta" overrides `app` with `beta_app`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from authority.admin import Admin
from authority.datadir import DataDir
from tests.unit.console.client import Console, add_fleet, browser, console_app


@pytest.fixture
def app(data: DataDir, admin: Admin) -> Iterator[FastAPI]:
    """The console over acme with a policy, a deployer and a read-only viewer."""
    yield from console_app(data, admin)


@pytest.fixture
def beta_app(data: DataDir, admin: Admin) -> Iterator[FastAPI]:
    """`app`, with acme's fleet and "beta", an organization with no policy yet."""
    for application in console_app(data, admin):
        add_fleet(admin)
        admin.org_create("beta", "local", None, None)
        yield application


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[Console]:
    """A browser on the console, not signed in."""
    yield from browser(app)


@pytest.fixture
def deployer(app: FastAPI) -> Iterator[Console]:
    """A browser signed in as the deployer, who may change things."""
    yield from browser(app, "deployer")


@pytest.fixture
def viewer(app: FastAPI) -> Iterator[Console]:
    """A browser signed in as the read-only viewer."""
    yield from browser(app, "viewer")


@pytest.fixture
def fleet(admin: Admin) -> None:
    """acme's devices: one registered with a backup, one whose registration was refused."""
    add_fleet(admin)
