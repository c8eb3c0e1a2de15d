"""The data folder: atomic writes, finding the folder, and the server's public address."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from authority.datadir import ENV_DATA, DataDir, ServerConfig, write_atomic
from authority.errors import InvalidInput, NotInitialised

# Atomic writes


def test_write_atomic_writes_the_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b'{"version": 1}\n')
    assert target.read_bytes() == b'{"version": 1}\n'
    assert os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("wanted", [0o600, 0o644, 0o640])
def test_write_atomic_sets_the_mode_asked_for(tmp_path: Path, wanted: int) -> None:
    target = tmp_path / "file"
    write_atomic(target, b"x", mode=wanted)
    assert stat.S_IMODE(target.stat().st_mode) == wanted


def test_write_atomic_defaults_to_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    write_atomic(target, b"x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_write_atomic_replaces_content_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "file"
    write_atomic(target, b"old content that is longer", mode=0o644)
    write_atomic(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["file"]


def test_write_atomic_creates_missing_parent_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file"
    write_atomic(target, b"x")
    assert target.read_bytes() == b"x"


def test_failed_write_keeps_the_old_content_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file"
    write_atomic(target, b"old")

    def disk_full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file"]


# Finding the folder


def test_resolve_takes_the_data_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DATA, raising=False)
    assert DataDir.resolve(str(tmp_path)).root == tmp_path


def test_resolve_falls_back_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOLDFAST_AUTHORITY_DATA", str(tmp_path / "from-env"))
    assert DataDir.resolve(None).root == tmp_path / "from-env"


def test_data_option_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_DATA, str(tmp_path / "from-env"))
    assert DataDir.resolve(str(tmp_path / "given")).root == tmp_path / "given"


def test_resolve_without_option_or_environment_says_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_DATA, raising=False)
    with pytest.raises(InvalidInput) as caught:
        DataDir.resolve(None)
    assert "--data" in caught.value.message
    assert "HOLDFAST_AUTHORITY_DATA" in caught.value.message
    assert caught.value.exit_code == 2


def test_resolve_makes_a_relative_folder_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert DataDir.resolve("rel").root == tmp_path / "rel"


def test_resolve_expands_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert DataDir.resolve("~/authority").root == tmp_path / "authority"


# Initialised or not


def test_uninitialised_folder_error_names_the_folder_and_the_init_command(tmp_path: Path) -> None:
    folder = DataDir(tmp_path / "data")
    with pytest.raises(NotInitialised) as caught:
        folder.require_initialised()
    message = caught.value.message
    assert str(tmp_path / "data") in message
    assert f"holdfast-authority init --data {tmp_path / 'data'}" in message
    assert caught.value.exit_code == 2


def test_folder_with_only_a_database_is_not_initialised(tmp_path: Path) -> None:
    folder = DataDir(tmp_path)
    folder.database.touch()
    assert not folder.is_initialised()


def test_config_round_trips(tmp_path: Path) -> None:
    folder = DataDir(tmp_path)
    folder.database.touch()
    folder.write_config(ServerConfig("backup.example.com", 8443))
    assert folder.read_config() == ServerConfig("backup.example.com", 8443)
    assert json.loads(folder.config_file.read_text())["version"] == 1


def test_config_of_an_unknown_version_is_refused(tmp_path: Path) -> None:
    folder = DataDir(tmp_path)
    folder.database.touch()
    folder.config_file.write_text('{"version": 99, "host": "h", "port": 1}')
    with pytest.raises(InvalidInput, match="version 99"):
        folder.read_config()


@pytest.mark.parametrize("body", ["not json", '{"version": 1}', '{"version": 1, "host": "h"}'])
def test_damaged_config_is_reported_as_such(tmp_path: Path, body: str) -> None:
    folder = DataDir(tmp_path)
    folder.database.touch()
    folder.config_file.write_text(body)
    with pytest.raises(InvalidInput, match="is damaged"):
        folder.read_config()


# The deployment URL


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("backup.example.com", "https://backup.example.com:4285"),
        ("192.0.2.10", "https://192.0.2.10:4285"),
        ("::1", "https://[::1]:4285"),
        ("2001:db8::5", "https://[2001:db8::5]:4285"),
    ],
)
def test_deployment_url_brackets_ipv6_only(host: str, url: str) -> None:
    assert ServerConfig(host, 4285).deployment_url == url
