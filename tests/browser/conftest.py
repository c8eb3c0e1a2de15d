"""Fixtures for the console in a real headless browser: Debian's chromium, driven by Playwright.

The authority is the real `holdfast-authority serve` (tests/integration/authority_process.py),
its console administrator made by the real CLI, its password given on stdin as a provisioning
script would. Never `playwright install`: the browser is the system's `/usr/bin/chromium`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, ViewportSize, sync_playwright

from tests.conftest import require_tool
from tests.integration.authority_process import Authority, free_port, initialise

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]
VIEWPORT: ViewportSize = {"width": 1366, "height": 900}
ADMIN_NAME = "alice"
ADMIN_PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Console:
    """A running authority with one console administrator (role deploy)."""

    authority: Authority
    name: str
    password: str

    @property
    def url(self) -> str:
        return self.authority.url


def create_console_admin(data: Path, name: str, password: str, role: str = "deploy") -> None:
    """`holdfast-authority admin create NAME --role ROLE`, the password twice on stdin."""
    command = ["admin", "create", name, "--role", role, "--data", str(data)]
    result = subprocess.run(
        [sys.executable, "-m", "authority", *command],
        input=f"{password}\n{password}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, f"admin create exited {result.returncode}: {result.stderr}"


@pytest.fixture
def tools() -> None:
    """Skip (fail in CI) where the browser or the detection sandbox is missing."""
    require_tool(CHROMIUM.exists(), "chromium is not installed (Debian package chromium)")
    require_tool(shutil.which("bwrap") is not None, "bubblewrap is not installed (bubblewrap)")


@pytest.fixture
def console(tmp_path: Path, tools: None) -> Iterator[Console]:
    """An initialised authority with no organization yet, serving its console."""
    data = tmp_path / "authority"
    port = free_port()
    initialise(data, port)
    create_console_admin(data, ADMIN_NAME, ADMIN_PASSWORD)
    server = Authority(data=data, port=port)
    server.start()
    try:
        yield Console(server, ADMIN_NAME, ADMIN_PASSWORD)
    finally:
        server.stop()
        log = data / "serve.out"  # pytest shows it only when the test failed
        if log.exists():
            print("--- the authority's serve.out (last 80 lines) ---")
            print("\n".join(log.read_text(errors="replace").splitlines()[-80:]))


@pytest.fixture
def page(console: Console) -> Iterator[Page]:
    """A page in headless chromium that accepts the authority's self-signed certificate."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(ignore_https_errors=True, viewport=VIEWPORT)
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console.url)
            context.set_default_timeout(15_000)
            yield context.new_page()
            context.close()
        finally:
            browser.close()
