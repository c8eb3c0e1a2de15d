"""`holdfast diagnose`: what a support bundle holds, and that no secret of the device is in it."""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import secrets
import stat
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import diagnose, logs
from agent.backup.keys import MasterKey, save_master_key
from agent.cli import main
from agent.deploy_args import parse_cp_args, save
from agent.diagnose import build_bundle, diagnose_command
from agent.errors import UsageError
from agent.lifecycle import Phase, State
from agent.paths import AgentPaths
from agent.state import save_state, write_json

PIN = "ab" * 32
URL = "https://backup.example.com:4285"
ALWAYS = {"versions.txt", "status.json", "doctor.txt", "files.txt", "missing.txt"}


@dataclass
class Device:
    """A fake agent home with every secret an agent holds, planted in as many files as can be."""

    paths: AgentPaths
    token: str
    credential: str
    key: bytes
    password: str
    guid: str

    def forms(self) -> dict[str, str]:
        """Every spelling of every secret that must not reach a bundle."""
        return {
            "token": self.token,
            "token, upper case": self.token.upper(),
            "credential": self.credential,
            "key, base64": base64.b64encode(self.key).decode(),
            "key, base64 unpadded": base64.b64encode(self.key).decode().rstrip("="),
            "key, urlsafe base64": base64.urlsafe_b64encode(self.key).decode(),
            "key, hex": self.key.hex(),
            "key, HEX": self.key.hex().upper(),
            "password": self.password,
        }


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    paths = AgentPaths.under(tmp_path / "agent")
    paths.ensure()
    token = str(uuid.uuid4())
    credential = secrets.token_urlsafe(32)
    key = os.urandom(32)
    password = "Tr0ub4dor&3-horse"
    guid = str(uuid.uuid4())
    key_b64 = base64.b64encode(key).decode()
    save(
        parse_cp_args(f"DEPLOYMENT_URL={URL}&DEPLOYMENT_POLICY_TOKEN={token}&SSL_WHITELIST={PIN}"),
        paths.deploy_properties,
    )
    paths.agent_yaml.write_text(f"log_level: debug\n# old token was {{{token.upper()}}}\n")
    now = dt.datetime.now(dt.UTC)
    save_state(
        paths.state_file,
        State(
            phase=Phase.BACKING_UP,
            since=now,
            username="ann@example.com",
            user_home="/home/ann",
            last_error=f"the authority refused credential {credential}",
        ),
    )
    write_json(
        paths.identity,
        1,
        {"guid": guid, "hardware_id": "f" * 64, "created_at": now.isoformat()},
        mode=0o644,
    )
    paths.credential.write_text(credential + "\n")
    save_master_key(paths.state, MasterKey(key, escrowed=True))
    (paths.state / "files.cache").write_bytes(b"SQLite format 3\x00" + os.urandom(256))
    (paths.state / "something.new").write_text("a file a later version adds\n")
    paths.agent_log.write_text(
        f"made the device identity {guid}\n"
        f"Retrieving deployment policy (token {token})\n"
        f"sent Authorization: Bearer {credential}\n"
        f"sign-in with password {password} by mistake\n"
        f"key dump {key.hex()} / {key_b64}\n"
        "Completed backup: snapshot s1, 5 files\n"
    )
    (paths.log / "agent.log.1").write_text(f"CP_ARGS=DEPLOYMENT_POLICY_TOKEN={token.upper()}\n")
    (paths.log / "detection.log").write_text(f"script printed {credential}\n")
    (paths.log / "history.log").write_text(f"backup done; key {key.hex().upper()}\n")
    # The daemon registers a password with the process' redactor for a sign-in.
    logs.redactor.add(password)
    try:
        yield Device(paths, token, credential, key, password, guid)
    finally:
        logs.redactor.discard(password)


def members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def assert_no_secret(found: dict[str, bytes], device: Device) -> None:
    for name, data in found.items():
        for what, secret in device.forms().items():
            assert secret.encode() not in data, f"{what} found in {name}"


def test_no_secret_reaches_any_member_of_the_bundle(device: Device, tmp_path: Path) -> None:
    bundle = tmp_path / "support.zip"
    build_bundle(device.paths, bundle)
    found = members(bundle)
    assert_no_secret(found, device)
    # The secrets were replaced, not the lines dropped: support still reads what happened.
    log = found["log/agent.log"].decode()
    assert "Retrieving deployment policy (token [redacted])" in log
    assert "sign-in with password [redacted] by mistake" in log
    assert f"made the device identity {device.guid}" in log
    assert "[redacted]" in found["log/agent.log.1"].decode()
    assert "[redacted]" in found["status.json"].decode()


def test_the_allow_listed_files_are_in_and_the_secret_files_are_not(
    device: Device, tmp_path: Path
) -> None:
    bundle = tmp_path / "support.zip"
    names = build_bundle(device.paths, bundle)
    found = members(bundle)
    assert sorted(names) == sorted(found)
    assert set(found) == ALWAYS | {
        "conf/agent.yaml",
        "conf/deploy.properties",
        "state/state.json",
        "state/identity",
        "log/agent.log",
        "log/agent.log.1",
        "log/detection.log",
        "log/history.log",
    }
    for secret_file in ("credential", "backup.key", "files.cache", "something.new"):
        assert f"state/{secret_file}" not in found
    assert b"SQLite format 3" not in b"".join(found.values())
    # The listing names them, so support sees the device has a credential and a key.
    listing = found["files.txt"].decode()
    assert "credential" in listing and "backup.key" in listing


def test_deploy_properties_keeps_url_and_pins_and_replaces_the_token(
    device: Device, tmp_path: Path
) -> None:
    bundle = tmp_path / "support.zip"
    build_bundle(device.paths, bundle)
    text = members(bundle)["conf/deploy.properties"].decode()
    assert f"DEPLOYMENT_URL={URL}" in text
    assert f"SSL_WHITELIST={PIN}" in text
    assert "DEPLOYMENT_POLICY_TOKEN=[redacted]" in text
    assert "accepted" in text.splitlines()[0]


def test_status_versions_and_doctor_are_in_the_bundle(device: Device, tmp_path: Path) -> None:
    bundle = tmp_path / "support.zip"
    build_bundle(device.paths, bundle, doctor=lambda: f"token check: ok ({device.token})\n")
    found = members(bundle)
    assert b'"phase": "backing_up"' in found["status.json"]
    assert device.guid.encode() in found["status.json"]
    versions = found["versions.txt"].decode()
    assert versions.startswith("holdfast 0.1.0\n")
    for package in ("httpx", "cryptography", "zstandard"):
        assert f"\n{package} " in versions
    assert found["doctor.txt"] == b"token check: ok ([redacted])\n"


def test_without_doctor_the_bundle_says_it_was_not_run(device: Device, tmp_path: Path) -> None:
    bundle = tmp_path / "support.zip"
    build_bundle(device.paths, bundle)
    assert b"was not run" in members(bundle)["doctor.txt"]


def test_secrets_shaped_values_are_redacted_even_when_unknown(
    device: Device, tmp_path: Path
) -> None:
    other = str(uuid.uuid4())
    with device.paths.agent_log.open("a") as log:
        log.write(f"pasted CP_ARGS=DEPLOYMENT_URL={URL}&DEPLOYMENT_POLICY_TOKEN={other}\n")
        log.write("Authorization: Bearer someoneelses-credential-value\n")
    bundle = tmp_path / "support.zip"
    build_bundle(device.paths, bundle)
    log_text = members(bundle)["log/agent.log"].decode()
    assert other not in log_text
    assert "someoneelses-credential-value" not in log_text
    assert f"DEPLOYMENT_URL={URL}&DEPLOYMENT_POLICY_TOKEN=[redacted]" in log_text


def test_the_bundle_is_private_and_written_without_leftovers(
    device: Device, tmp_path: Path
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    bundle = folder / "support.zip"
    build_bundle(device.paths, bundle)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert os.listdir(folder) == ["support.zip"]


def test_an_existing_output_is_refused_without_force(device: Device, tmp_path: Path) -> None:
    bundle = tmp_path / "support.zip"
    bundle.write_bytes(b"an earlier bundle")
    with pytest.raises(UsageError) as caught:
        build_bundle(device.paths, bundle)
    assert caught.value.exit_code == 2
    assert str(bundle) in caught.value.message and "--force" in caught.value.message
    assert bundle.read_bytes() == b"an earlier bundle"
    build_bundle(device.paths, bundle, force=True)
    assert zipfile.is_zipfile(bundle)


def test_an_output_folder_that_does_not_exist_is_refused(device: Device, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        build_bundle(device.paths, tmp_path / "no" / "such" / "support.zip")
    assert caught.value.exit_code == 2
    assert str(tmp_path / "no" / "such") in caught.value.message


def test_an_unreadable_file_is_listed_in_missing_txt(
    device: Device, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refuse(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: object) -> int:
        if Path(path).name == "detection.log":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    # The tests run as root, whom file modes do not stop: refuse the read as the OS would.
    monkeypatch.setattr(diagnose.os, "open", refuse)
    bundle = tmp_path / "support.zip"
    out = io.StringIO()
    assert diagnose_command(device.paths, bundle, out=out) == 0
    found = members(bundle)
    assert "log/detection.log" not in found
    assert "log/detection.log: permission denied" in found["missing.txt"].decode()
    assert "sudo holdfast diagnose" in out.getvalue()


def test_a_link_in_the_log_folder_is_not_followed(device: Device, tmp_path: Path) -> None:
    (device.paths.log / "sneaky.log").symlink_to(device.paths.credential)
    bundle = tmp_path / "support.zip"
    build_bundle(device.paths, bundle)
    found = members(bundle)
    assert "log/sneaky.log" not in found
    assert "log/sneaky.log: a symbolic link" in found["missing.txt"].decode()


def test_the_command_says_where_the_bundle_is_and_what_it_holds(
    device: Device, tmp_path: Path
) -> None:
    bundle = tmp_path / "support.zip"
    out = io.StringIO()
    assert diagnose_command(device.paths, bundle, out=out) == 0
    said = out.getvalue()
    assert str(bundle) in said
    assert "KB" in said
    assert "no token, credential, backup key or password" in said


def test_cli_diagnose_writes_then_refuses_then_forces(
    device: Device, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "support.zip"
    home = str(device.paths.log.parent)
    assert main(["diagnose", "--home", home, "--output", str(bundle)]) == 0
    assert str(bundle) in capsys.readouterr().out
    assert main(["diagnose", "--home", home, "--output", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("holdfast: ") and err.count("\n") == 1 and "--force" in err
    assert main(["diagnose", "--home", home, "--output", str(bundle), "--force"]) == 0
    missing = tmp_path / "absent" / "support.zip"
    assert main(["diagnose", "--home", home, "--output", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
