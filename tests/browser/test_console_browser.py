"""Issue 11 end to end in a real browser: the console deploys a policy a real agent registers with.

Sign in, create an organization and its policy from a shipped detection script, copy the
installer arguments from the policy page, start a real agent with them, watch its device
become `registered` on the devices page, then issue a new token from the console: a second
agent installed with the old arguments stays unregistered while the first is unaffected.
The policy and devices pages are saved as docs/screenshots/policy.png and devices.png.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import Console
from tests.integration.agent_process import Agent
from tests.integration.authority_process import admin_json

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
ORG = "Demo"
USERNAME = "demo.user@example.com"
PAGE_SECONDS = 60


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[[str], Agent]]:
    """Real agents, each with its own home (state, configuration, machine id); all stopped."""
    started: list[Agent] = []

    def make(name: str) -> Agent:
        agent = Agent(home=tmp_path / name)
        agent.configure()
        started.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in started:
            agent.stop()


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    """A home folder to back up, reachable by the unprivileged account detection runs as."""
    home = tmp_path / "home" / "demo"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "report.txt").write_text("Quarterly report\n")
    for folder in (tmp_path, tmp_path / "home", home):
        folder.chmod(0o755)
    return home


def visit(page: Page, url: str) -> None:
    """Open `url`; it must answer (after any redirect) with a success."""
    response = page.goto(url)
    assert response is not None, url
    assert response.ok, f"GET {url}: {response.status}\n{page.content()[:2000]}"


def submit(page: Page, button: str) -> None:
    """Click a form's button and wait for the page the post (or GET submit) leads to."""
    with page.expect_navigation() as navigation:
        page.click(button)
    response = navigation.value
    assert response is not None, button
    assert response.ok, f"{button} -> {page.url}: {response.status}\n{page.content()[:2000]}"


def sign_in(page: Page, console: Console) -> None:
    visit(page, f"{console.url}/sign-in")
    page.fill("input[name=name]", console.name)
    page.fill("input[name=password]", console.password)
    submit(page, "button#sign-in")
    assert "/sign-in" not in page.url, page.content()
    assert page.locator("button#sign-out").count() == 1


def create_org(page: Page, console: Console, name: str) -> None:
    visit(page, f"{console.url}/orgs")
    form = page.locator("form#create-org")
    form.locator("input[name=name]").fill(name)
    form.locator("select[name=auth]").select_option("local")
    submit(page, "form#create-org button#create-org")
    visit(page, f"{console.url}/orgs")
    assert page.locator(f"text={name}").count() >= 1, page.content()


def shipped_option(page: Page, select: str, filename: str) -> str:
    """The value of the option of `select` that names the shipped script `filename`."""
    options: list[dict[str, str]] = page.eval_on_selector_all(
        f"{select} option", "els => els.map(e => ({value: e.value, text: e.textContent}))"
    )
    for option in options:
        if filename in option["value"] or filename in option["text"]:
            return option["value"]
    raise AssertionError(f"{filename} is not offered in {select}: {options}")


def create_policy(page: Page, console: Console, org: str, home: Path) -> None:
    visit(page, f"{console.url}/orgs/{org}/policy")
    select = "select[name=shipped_linux]"
    page.select_option(select, shipped_option(page, select, "fixed_user.sh"))
    submit(page, "button#load-linux")
    editor = page.locator("textarea[name=script_linux]")
    script = editor.input_value()
    assert re.search(r"(?m)^FIXED_USERNAME=", script), script
    script = re.sub(r"(?m)^FIXED_USERNAME=.*$", f'FIXED_USERNAME="{USERNAME}"', script, count=1)
    script = re.sub(r"(?m)^FIXED_USER_HOME=.*$", f'FIXED_USER_HOME="{home}"', script, count=1)
    editor.fill(script)
    submit(page, "button#create-policy")
    visit(page, f"{console.url}/orgs/{org}/policy")
    assert page.locator("#cp-args").count() == 1, page.content()


def copied_cp_args(page: Page) -> str:
    """What the copy button copies: the clipboard, else the element the button names."""
    button = page.locator('button.copy[data-copy="cp-args"]')
    target = button.get_attribute("data-copy")
    assert target == "cp-args"
    shown = page.locator(f"#{target}").inner_text().strip()
    button.click()
    copied = ""
    deadline = time.monotonic() + 5  # the button's script writes the clipboard asynchronously
    while not copied and time.monotonic() < deadline:
        try:
            copied = page.evaluate("navigator.clipboard.readText()")
        except Exception:  # a headless browser without a clipboard: the element is what it copies
            break
        time.sleep(0.1)
    if copied:
        assert copied.strip() == shown
        return copied.strip()
    return shown


def device_status(page: Page, console: Console, guid: str | None) -> str | None:
    """The `td.status` of the device's row on /devices, or None when it is not listed."""
    visit(page, f"{console.url}/devices")
    assert page.locator("table#devices").count() == 1, page.content()
    rows = page.locator(f'table#devices tr[data-guid="{guid}"] td.status')
    if rows.count() == 0:
        return None
    return rows.first.inner_text().strip()


def wait_for_status(
    page: Page, console: Console, guid: str, predicate: Callable[[str | None], bool]
) -> str | None:
    deadline = time.monotonic() + PAGE_SECONDS
    status = device_status(page, console, guid)
    while not predicate(status) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = device_status(page, console, guid)
    assert predicate(status), f"device {guid} on /devices: {status!r}\n{page.content()}"
    return status


def all_statuses(page: Page, console: Console) -> dict[str, str]:
    visit(page, f"{console.url}/devices")
    found: dict[str, str] = page.eval_on_selector_all(
        "table#devices tr[data-guid]",
        "rows => Object.fromEntries(rows.map(r => "
        "[r.dataset.guid, r.querySelector('td.status').textContent.trim()]))",
    )
    return found


def test_console_deploys_a_policy_an_agent_registers_with_and_rotates_its_token(
    console: Console, page: Page, agents: Callable[[str], Agent], user_home: Path
) -> None:
    sign_in(page, console)
    create_org(page, console, ORG)
    create_policy(page, console, ORG, user_home)

    view: dict[str, Any] = admin_json(console.authority.data, "policy", "show", "--org", ORG)
    cp_args = copied_cp_args(page)
    assert cp_args == view["install_args"]["cp_args"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "policy.png"), full_page=True)

    first = agents("agent1")
    first.start("--deploy-args", cp_args)
    status = first.wait_phase("backing_up", timeout=90)
    assert status["username"] == USERNAME and status["org"] == ORG
    guid = status["device_guid"]
    assert guid
    wait_for_status(page, console, guid, lambda s: s == "registered")
    # Its first backup too, so the page shows the device protected, as an administrator
    # would see it a minute after the install.
    first.wait_for(lambda s: bool(s["last_backup"]), timeout=90, what="a first backup")
    visit(page, f"{console.url}/devices")
    row = page.locator(f'table#devices tr[data-guid="{guid}"]')
    assert "none yet" not in row.inner_text()
    assert "unprotected" not in (row.get_attribute("class") or "")
    page.screenshot(path=str(SCREENSHOTS / "devices.png"), full_page=True)

    visit(page, f"{console.url}/orgs/{ORG}/policy/rotate")
    submit(page, "button#confirm")
    rotated: dict[str, Any] = admin_json(console.authority.data, "policy", "show", "--org", ORG)
    assert rotated["token"] != view["token"]
    visit(page, f"{console.url}/orgs/{ORG}/policy")
    assert page.locator("#cp-args").inner_text().strip() == rotated["install_args"]["cp_args"]

    second = agents("agent2")
    second.start("--deploy-args", cp_args)
    refused = second.wait_for(
        lambda s: s["phase"] == "awaiting_policy" and s["attempts"] >= 2, what="refused fetches"
    )
    assert "replaced" in (refused["last_error"] or "")
    statuses = all_statuses(page, console)
    assert statuses.get(guid) == "registered", statuses
    # A device that never got the policy may not be listed; if it is, it is not registered.
    others = {g: s for g, s in statuses.items() if g != guid}
    assert all(s.startswith("installed, not registered") for s in others.values()), others
    assert refused.get("device_guid") != guid
    if refused.get("device_guid"):
        shown = statuses.get(refused["device_guid"])
        assert shown is None or shown.startswith("installed, not registered"), shown
    assert first.status()["phase"] == "backing_up"
