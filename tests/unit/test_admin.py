"""Administrator operations over a data folder: init, policies and their installer arguments."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from authority.admin import Admin, init_data
from authority.datadir import DataDir
from authority.errors import InvalidInput, NotFound, NotInitialised
from authority.orgs import find_org
from authority.registration import DeviceReport, record_report
from authority.tls import CertificateStore
from authority.views import print_policy

INSTALL_ARG_KEYS = {"cp_args", "msiexec", "deploy_properties", "linux"}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def cp_args_of(view: dict[str, object]) -> dict[str, str]:
    install_args = view["install_args"]
    assert isinstance(install_args, dict)
    return dict(part.split("=", 1) for part in install_args["cp_args"].split("&"))


# init


def test_init_prints_the_fingerprints_agents_pin(tmp_path: Path) -> None:
    folder = DataDir(tmp_path / "d")
    text = init_data(folder, "backup.example.com", 4285)
    current = CertificateStore(folder).current()
    assert current.sha1 in text
    assert current.sha256 in text
    assert "https://backup.example.com:4285" in text
    assert folder.is_initialised()


def test_init_keeps_secrets_from_other_users(data: DataDir) -> None:
    assert stat.S_IMODE(data.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(data.database.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.admin_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(CertificateStore(data).key_path("current").stat().st_mode) == 0o600


def test_init_twice_is_refused_and_changes_nothing(data: DataDir) -> None:
    before = snapshot(data.root)
    with pytest.raises(InvalidInput, match="already initialised"):
        init_data(data, "other.example.com", 9999)
    assert snapshot(data.root) == before


@pytest.mark.parametrize("host", ["", "backup example.com", "https://backup.example.com"])
def test_init_refuses_what_is_not_a_host_name(tmp_path: Path, host: str) -> None:
    folder = DataDir(tmp_path / "d")
    with pytest.raises(InvalidInput, match="--host"):
        init_data(folder, host, 4285)
    assert not folder.is_initialised()


def test_init_refuses_a_host_with_a_port(tmp_path: Path) -> None:
    # Once a bug: the folder is initialised with the DEPLOYMENT_URL
    # https://[backup.example.com:8443]:4285, which no agent can connect to.
    folder = DataDir(tmp_path / "d")
    with pytest.raises(InvalidInput, match="--host"):
        init_data(folder, "backup.example.com:8443", 4285)


def test_init_accepts_a_long_fully_qualified_host_name(tmp_path: Path) -> None:
    # A valid DNS name may be 253 characters long; cloud hosts' FQDNs often pass 64.
    # Once a bug: the name is put in the certificate's CN, which X.509 caps at 64
    # characters, so init dies with cryptography's ValueError after creating the database.
    host = "ip-10-20-30-40.backup-authority-primary.eu-central-1.compute.internal"
    assert len(host) > 64
    folder = DataDir(tmp_path / "d")
    init_data(folder, host, 4285)
    assert folder.read_config().host == host


def test_admin_on_an_uninitialised_folder_says_how_to_initialise(tmp_path: Path) -> None:
    with pytest.raises(NotInitialised, match="holdfast-authority init --data"):
        Admin(DataDir(tmp_path / "empty"))


# Policies and installer arguments


def test_policy_show_gives_the_four_forms_of_installer_arguments(admin: Admin) -> None:
    admin.org_create("Acme", "local", None, None)
    admin.policy_create("Acme", False, [])
    view = admin.policy_show("Acme")
    assert set(view["install_args"]) == INSTALL_ARG_KEYS
    assert cp_args_of(view) == {
        "DEPLOYMENT_URL": "https://127.0.0.1:4285",
        "DEPLOYMENT_POLICY_TOKEN": view["token"],
        "SSL_WHITELIST": admin.certs.current().sha1,
    }


def test_policy_show_pins_the_staged_certificate_after_renew(admin: Admin) -> None:
    admin.org_create("Acme", "local", None, None)
    admin.policy_create("Acme", False, [])
    current = admin.certs.current().sha1
    admin.tls_renew()
    staged = admin.certs.fingerprints("next")
    assert staged is not None
    assert cp_args_of(admin.policy_show("Acme"))["SSL_WHITELIST"] == f"{current},{staged.sha1}"
    admin.tls_activate()
    assert cp_args_of(admin.policy_show("Acme"))["SSL_WHITELIST"] == staged.sha1


def test_policy_text_shows_each_installer_form(admin: Admin) -> None:
    admin.org_create("Acme", "local", None, None)
    admin.policy_create("Acme", False, [])
    view = admin.policy_show("Acme")
    text = print_policy(view)
    assert view["install_args"]["cp_args"] in text
    assert view["install_args"]["msiexec"] in text
    assert view["install_args"]["linux"] in text


def test_policy_create_with_one_bad_script_creates_nothing(admin: Admin, tmp_path: Path) -> None:
    admin.org_create("Acme", "local", None, None)
    good = tmp_path / "detect.sh"
    good.write_text("echo AGENT_USERNAME=a@example.com\n")
    ps1 = tmp_path / "detect.ps1"
    ps1.write_text("Write-Output 'AGENT_USERNAME=a@example.com'\n")
    missing = tmp_path / "missing.sh"
    with pytest.raises(InvalidInput, match=r"missing\.sh"):
        admin.policy_create("Acme", False, [f"linux={good}", f"macos={missing}", f"windows={ps1}"])
    with pytest.raises(NotFound) as caught:
        admin.policy_show("Acme")
    assert caught.value.code == "policy_not_found"
    assert admin.org_list()[0]["has_policy"] is False


def test_policy_create_stores_the_scripts_with_their_hashes(admin: Admin, tmp_path: Path) -> None:
    admin.org_create("Acme", "local", None, None)
    linux = tmp_path / "detect.sh"
    linux.write_text("#!/bin/sh\necho AGENT_USERNAME=a@example.com\n")
    admin.policy_create("Acme", True, [f"linux={linux}"])
    view = admin.policy_show("Acme")
    assert view["registration"] == "manual"
    (stored,) = view["scripts"]
    assert (stored["os"], stored["filename"], stored["interpreter"]) == (
        "linux",
        "detect.sh",
        ["/bin/sh"],
    )
    assert len(stored["sha256"]) == 64


def test_policy_rotate_changes_the_token_in_the_installer_arguments(admin: Admin) -> None:
    admin.org_create("Acme", "local", None, None)
    admin.policy_create("Acme", False, [])
    old = admin.policy_show("Acme")["token"]
    message = admin.policy_rotate("Acme")
    new = admin.policy_show("Acme")["token"]
    assert new != old
    assert new in message
    assert cp_args_of(admin.policy_show("Acme"))["DEPLOYMENT_POLICY_TOKEN"] == new


def test_policy_set_reports_the_new_values(admin: Admin) -> None:
    admin.org_create("Acme", "local", None, None)
    admin.policy_create("Acme", False, [])
    message = admin.policy_set("Acme", ["allow_user_stop=off", "exclude="])
    assert "allow_user_stop=false" in message
    assert "exclude=(none)" in message
    assert admin.policy_show("Acme")["settings"]["allow_user_stop"] is False


# Devices


def test_device_list_pending_shows_only_unregistered_devices(admin: Admin) -> None:
    admin.org_create("Acme", "local", None, None)
    guid = "0b7e4b56-4f0e-4d7c-9a55-2c1d3e4f5a6b"
    with admin.db.transaction() as s:
        record_report(s, find_org(s, "Acme"), DeviceReport(guid, name="bob-pc"))
    (pending,) = admin.device_list(None, pending=True)
    assert pending["guid"] == guid
    assert pending["registered"] is False
    assert admin.device_list("Acme", pending=False) == [pending]


def test_a_data_folder_from_an_earlier_release_gains_new_tables_and_columns(
    tmp_path: Path,
) -> None:
    import sqlite3

    from authority import cli

    data = DataDir(tmp_path / "old")
    init_data(data, "127.0.0.1", 4285)
    with sqlite3.connect(data.database) as db:
        db.execute("DROP TABLE registration_attempts")
        db.execute("ALTER TABLE users DROP COLUMN needs_mapping")
    assert cli.main(["org", "create", "Later", "--auth", "local", "--data", str(data.root)]) == 0
    assert cli.main(["user", "list", "--json", "--data", str(data.root)]) == 0
    with sqlite3.connect(data.database) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "needs_mapping" in columns
    assert "registration_attempts" in tables
