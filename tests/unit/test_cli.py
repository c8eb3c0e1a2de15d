"""`holdfast-authority` as administrators and their scripts run it: exit codes, stderr, JSON."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from authority.cli import main
from authority.datadir import DataDir
from authority.db import Database
from authority.orgs import find_org
from authority.registration import DeviceReport, record_report
from authority.tls import CertificateStore

GUID = "0b7e4b56-4f0e-4d7c-9a55-2c1d3e4f5a6b"


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    # The parser asks for this machine's name (the default of `init --host`): keep it offline.
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "authority.test")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *words: str) -> None:
    assert err.startswith("holdfast-authority: ")
    assert err.count("\n") == 1 and err.endswith("\n")
    assert "Traceback" not in err
    for word in words:
        assert word in err


@pytest.fixture
def acme(data: DataDir, capsys: pytest.CaptureFixture[str]) -> str:
    """The data folder, as --data's value, with organization Acme and its policy."""
    root = str(data.root)
    assert run(capsys, "org", "create", "Acme", "--auth", "local", "--data", root)[0] == 0
    assert run(capsys, "policy", "create", "--org", "Acme", "--data", root)[0] == 0
    return root


# Success


def test_init_exits_0_and_prints_the_fingerprints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "d"
    code, out, err = run(capsys, "init", "--data", str(folder), "--host", "backup.example.com")
    assert code == 0, err
    current = CertificateStore(DataDir(folder)).current()
    assert current.sha1 in out
    assert current.sha256 in out
    assert "https://backup.example.com:4285" in out


def test_policy_show_json_is_one_json_object_with_installer_arguments(
    acme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "policy", "show", "--org", "Acme", "--json", "--data", acme)
    assert (code, err) == (0, "")
    view = json.loads(out)
    assert view["org"] == "Acme"
    assert set(view["install_args"]) == {"cp_args", "msiexec", "deploy_properties", "linux"}
    sha1 = CertificateStore(DataDir(Path(acme))).current().sha1
    assert view["install_args"]["cp_args"] == (
        f"DEPLOYMENT_URL=https://127.0.0.1:4285&DEPLOYMENT_POLICY_TOKEN={view['token']}"
        f"&SSL_WHITELIST={sha1}"
    )


def test_org_list_json_lists_the_organizations(
    acme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "org", "list", "--json", "--data", acme)
    assert (code, err) == (0, "")
    (org,) = json.loads(out)
    assert (org["name"], org["auth"], org["active"], org["has_policy"]) == (
        "Acme",
        "local",
        True,
        True,
    )


def test_device_list_json_has_the_documented_keys(
    acme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = Database(DataDir(Path(acme)).database_url)
    try:
        with db.transaction() as s:
            record_report(s, find_org(s, "Acme"), DeviceReport(GUID, name="bob-pc", os="linux"))
    finally:
        db.close()
    code, out, err = run(capsys, "device", "list", "--json", "--data", acme)
    assert (code, err) == (0, "")
    (device,) = json.loads(out)
    for key in ("guid", "name", "username", "org", "registered_at", "phase", "last_error"):
        assert key in device
    assert (device["guid"], device["name"], device["org"]) == (GUID, "bob-pc", "Acme")
    assert device["registered_at"] is None


def test_empty_lists_are_empty_json_arrays(
    data: DataDir, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["org", "list"], ["device", "list"], ["user", "list"]):
        code, out, _ = run(capsys, *command, "--json", "--data", str(data.root))
        assert code == 0
        assert json.loads(out) == []


def test_data_folder_comes_from_the_environment(
    acme: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOLDFAST_AUTHORITY_DATA", acme)
    code, out, _ = run(capsys, "org", "list", "--json")
    assert code == 0
    assert json.loads(out)[0]["name"] == "Acme"


# Refusals: exit 2, one line on stderr


def test_uninitialised_data_folder_exits_2_naming_folder_and_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "empty"
    code, out, err = run(capsys, "org", "list", "--data", str(folder))
    assert code == 2
    assert out == ""
    assert_one_line_error(err, str(folder), "holdfast-authority init")


def test_no_data_folder_at_all_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOLDFAST_AUTHORITY_DATA", raising=False)
    code, _, err = run(capsys, "org", "list")
    assert code == 2
    assert_one_line_error(err, "--data", "HOLDFAST_AUTHORITY_DATA")


def test_init_of_an_initialised_folder_exits_2(
    data: DataDir, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "init", "--data", str(data.root), "--host", "127.0.0.1")
    assert code == 2
    assert_one_line_error(err, "already initialised")


def test_unknown_org_exits_2_naming_it(acme: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "policy", "show", "--org", "Nope", "--data", acme)
    assert code == 2
    assert out == ""
    assert_one_line_error(err, "'Nope'")


def test_second_policy_exits_2(acme: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "policy", "create", "--org", "Acme", "--data", acme)
    assert code == 2
    assert_one_line_error(err, "already has a deployment policy")


def test_missing_script_exits_2_naming_the_file(
    data: DataDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(data.root)
    run(capsys, "org", "create", "Acme", "--auth", "local", "--data", root)
    missing = tmp_path / "no-such-script.sh"
    code, _, err = run(
        capsys, "policy", "create", "--org", "Acme", "--script", f"linux={missing}", "--data", root
    )
    assert code == 2
    assert_one_line_error(err, str(missing))
    code, out, _ = run(capsys, "org", "list", "--json", "--data", root)
    assert json.loads(out)[0]["has_policy"] is False


def test_unknown_os_exits_2_naming_it(
    data: DataDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(data.root)
    run(capsys, "org", "create", "Acme", "--auth", "local", "--data", root)
    script = tmp_path / "detect.sh"
    script.write_text("echo hi\n")
    code, _, err = run(
        capsys, "policy", "create", "--org", "Acme", "--script", f"solaris={script}", "--data", root
    )
    assert code == 2
    assert_one_line_error(err, "'solaris'", "linux, macos, windows")


def test_unknown_policy_setting_exits_2_naming_it(
    acme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "policy", "set", "--org", "Acme", "colour=blue", "--data", acme)
    assert code == 2
    assert_one_line_error(err, "'colour'", "backup_interval_seconds")


def test_ldap_org_without_directory_exits_2(acme: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "org", "create", "Corp", "--auth", "ldap", "--data", acme)
    assert code == 2
    assert_one_line_error(err, "--ldap-url")


def test_reset_password_of_an_unknown_user_exits_2(
    acme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "user", "reset-password", "ghost@example.com", "--data", acme)
    assert code == 2
    assert_one_line_error(err, "'ghost@example.com'")


def test_activate_without_renew_exits_2(acme: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tls", "activate", "--data", acme)
    assert code == 2
    assert_one_line_error(err, "tls renew")


def test_missing_required_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["org", "create", "Acme"])
    assert caught.value.code == 2
    assert "--auth" in capsys.readouterr().err
