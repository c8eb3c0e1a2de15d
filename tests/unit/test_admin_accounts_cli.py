"""`holdfast-authority admin ...`: console administrators as an operator or a script makes them."""

from __future__ import annotations

import datetime as dt
import getpass
import io
import json
import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from authority.cli import main
from authority.console.accounts import LOCK_AFTER, Operator, list_accounts, operator_for, sign_in
from authority.datadir import DataDir
from authority.db import Database
from authority.errors import TooManyAttempts, Unauthorized

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "authority.test")


@pytest.fixture(autouse=True)
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every test here: no password reaches the log."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    for secret in (PASSWORD, NEW_PASSWORD):
        assert secret not in caplog.text


@pytest.fixture
def db(data: DataDir) -> Iterator[Database]:
    database = Database(data.database_url)
    yield database
    database.close()


def run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: DataDir,
    *argv: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([*argv, "--data", str(data.root)])
    out, err = capsys.readouterr()
    for secret in (PASSWORD, NEW_PASSWORD):
        assert secret not in out + err
    return code, out, err


def twice(password: str) -> str:
    return f"{password}\n{password}\n"


def accounts(db: Database) -> list[dict[str, object]]:
    with db.transaction() as s:
        return list_accounts(s)


def signs_in(db: Database, name: str, password: str) -> Operator | None:
    try:
        with db.transaction() as s:
            return sign_in(s, name, password, now=dt.datetime.now(dt.UTC), client="test")[1]
    except Unauthorized:
        return None


def assert_one_line_error(err: str, *words: str) -> None:
    assert err.startswith("holdfast-authority: ")
    assert err.count("\n") == 1
    for word in words:
        assert word in err


@pytest.fixture
def alice(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data: DataDir
) -> str:
    code, _, err = run(capsys, monkeypatch, data, "admin", "create", "Alice", stdin=twice(PASSWORD))
    assert code == 0, err
    return "Alice"


# admin create


def test_create_reads_the_password_twice_from_stdin_and_prints_where_to_sign_in(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: DataDir,
    db: Database,
) -> None:
    code, out, err = run(
        capsys, monkeypatch, data, "admin", "create", "Alice", stdin=twice(PASSWORD)
    )
    assert (code, err) == (0, "")
    assert out == (
        "Created console administrator 'Alice' (deploy role). Sign in at https://127.0.0.1:4285/\n"
    )
    operator = signs_in(db, "alice", PASSWORD)
    assert operator is not None and operator.can_deploy


def test_create_read_only_role(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: DataDir,
    db: Database,
) -> None:
    code, out, _ = run(
        capsys,
        monkeypatch,
        data,
        "admin",
        "create",
        "auditor",
        "--role",
        "read-only",
        stdin=twice(PASSWORD),
    )
    assert code == 0
    assert "(read-only role)" in out
    operator = signs_in(db, "auditor", PASSWORD)
    assert operator is not None and not operator.can_deploy


@pytest.mark.parametrize(
    "case",
    [
        (f"{PASSWORD}\n{PASSWORD}x\n", "the two passwords differ; nothing was changed"),
        (f"{PASSWORD}\n", "expected the password twice, as two lines on standard input"),
        ("", "expected the password twice, as two lines on standard input"),
        ("\n\n", "the password is empty; nothing was changed"),
        (twice("short"), "the password is too short: 5 characters, at least 12"),
    ],
)
def test_create_with_a_bad_password_exits_2_and_creates_nothing(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: DataDir,
    db: Database,
    case: tuple[str, str],
) -> None:
    stdin, message = case
    code, out, err = run(capsys, monkeypatch, data, "admin", "create", "Alice", stdin=stdin)
    assert (code, out) == (2, "")
    assert_one_line_error(err, message)
    assert accounts(db) == []


def test_create_with_a_password_equal_to_the_name_exits_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: DataDir,
    db: Database,
) -> None:
    name = "alice@example.com"
    code, _, err = run(capsys, monkeypatch, data, "admin", "create", name, stdin=twice(name))
    assert code == 2
    assert_one_line_error(err, "the password must not be the administrator's name")
    assert accounts(db) == []


def test_create_a_taken_name_exits_2_before_asking_for_a_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data: DataDir, alice: str
) -> None:
    stdin = io.StringIO(twice(NEW_PASSWORD))
    monkeypatch.setattr(sys, "stdin", stdin)
    code = main(["admin", "create", "ALICE", "--data", str(data.root)])
    _, err = capsys.readouterr()
    assert code == 2
    assert_one_line_error(err, "a console administrator named 'Alice' already exists")
    assert stdin.tell() == 0  # nothing read


def test_create_a_bad_name_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data: DataDir
) -> None:
    code, _, err = run(
        capsys, monkeypatch, data, "admin", "create", "al ice", stdin=twice(PASSWORD)
    )
    assert code == 2
    assert_one_line_error(err, "'al ice' is not allowed", "1 to 64 characters")


def test_create_an_unknown_role_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data: DataDir
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(capsys, monkeypatch, data, "admin", "create", "x", "--role", "root")
    assert exited.value.code == 2
    assert "invalid choice: 'root'" in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_password_is_asked_twice_without_echo(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: DataDir,
    db: Database,
) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        prompts.append(prompt)
        return PASSWORD

    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    assert main(["admin", "create", "Alice", "--data", str(data.root)]) == 0
    assert prompts == ["Password for Alice: ", "Again: "]
    assert signs_in(db, "Alice", PASSWORD) is not None


def test_on_a_terminal_end_of_input_exits_2_and_creates_nothing(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: DataDir,
    db: Database,
) -> None:
    def eof(prompt: str = "Password: ", stream: object = None) -> str:
        raise EOFError

    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(getpass, "getpass", eof)
    assert main(["admin", "create", "Alice", "--data", str(data.root)]) == 2
    assert_one_line_error(capsys.readouterr().err, "no password was typed")
    assert accounts(db) == []


def test_admin_commands_on_an_uninitialised_folder_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = DataDir(tmp_path / "empty")
    code, _, err = run(capsys, monkeypatch, empty, "admin", "create", "x", stdin=twice(PASSWORD))
    assert code == 2
    assert_one_line_error(err, "is not initialised")


# admin list


def test_list_text_and_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data: DataDir, alice: str
) -> None:
    code, out, _ = run(capsys, monkeypatch, data, "admin", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "ROLE", "CREATED", "LAST", "SIGN-IN", "LOCK"]
    assert row.split()[:2] == ["Alice", "deploy"] and "never" in row
    code, out, _ = run(capsys, monkeypatch, data, "admin", "list", "--json")
    assert code == 0
    (entry,) = json.loads(out)
    assert entry["name"] == "Alice" and entry["role"] == "deploy"
    assert entry["last_sign_in_at"] is None and entry["locked_until"] is None
    assert dt.datetime.fromisoformat(entry["created_at"]).tzinfo is not None


def test_list_without_accounts_says_how_to_make_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data: DataDir
) -> None:
    assert run(capsys, monkeypatch, data, "admin", "list")[1] == (
        "No console administrators (holdfast-authority admin create NAME makes one).\n"
    )
    assert json.loads(run(capsys, monkeypatch, data, "admin", "list", "--json")[1]) == []


# admin password, unlock, delete


def test_password_replaces_it_and_ends_sessions(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: DataDir,
    db: Database,
    alice: str,
) -> None:
    now = dt.datetime.now(dt.UTC)
    with db.transaction() as s:
        cookie, _ = sign_in(s, "alice", PASSWORD, now=now, client="test")
    code, out, _ = run(
        capsys, monkeypatch, data, "admin", "password", "alice", stdin=twice(NEW_PASSWORD)
    )
    assert code == 0
    assert out == (
        "Changed the password of console administrator 'Alice'; its sessions were ended.\n"
    )
    with db.transaction() as s:
        assert operator_for(s, cookie, now=now) is None
    assert signs_in(db, "alice", PASSWORD) is None
    assert signs_in(db, "alice", NEW_PASSWORD) is not None


def test_password_mismatch_keeps_the_old_one(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: DataDir,
    db: Database,
    alice: str,
) -> None:
    stdin = f"{NEW_PASSWORD}\n{NEW_PASSWORD}!\n"
    code, _, err = run(capsys, monkeypatch, data, "admin", "password", "alice", stdin=stdin)
    assert code == 2
    assert_one_line_error(err, "the two passwords differ")
    assert signs_in(db, "alice", PASSWORD) is not None


def test_password_of_an_unknown_name_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, data: DataDir
) -> None:
    code, _, err = run(
        capsys, monkeypatch, data, "admin", "password", "bob", stdin=twice(NEW_PASSWORD)
    )
    assert code == 2
    assert_one_line_error(err, "no console administrator named 'bob'")


def test_unlock_ends_a_lockout(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: DataDir,
    db: Database,
    alice: str,
) -> None:
    for _ in range(LOCK_AFTER - 1):
        assert signs_in(db, "alice", "not the password") is None
    with pytest.raises(TooManyAttempts):
        signs_in(db, "alice", "not the password")
    locked = json.loads(run(capsys, monkeypatch, data, "admin", "list", "--json")[1])
    assert locked[0]["locked_until"] is not None
    assert "locked until" in run(capsys, monkeypatch, data, "admin", "list")[1]
    code, out, _ = run(capsys, monkeypatch, data, "admin", "unlock", "ALICE")
    assert code == 0
    assert out == "Unlocked console administrator 'Alice': it can sign in again.\n"
    assert signs_in(db, "alice", PASSWORD) is not None


def test_delete_removes_the_account_and_its_sessions(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data: DataDir,
    db: Database,
    alice: str,
) -> None:
    now = dt.datetime.now(dt.UTC)
    with db.transaction() as s:
        cookie, _ = sign_in(s, "alice", PASSWORD, now=now, client="test")
    code, out, _ = run(capsys, monkeypatch, data, "admin", "delete", "alice")
    assert code == 0
    assert out == "Deleted console administrator 'Alice'; its sessions were ended.\n"
    assert accounts(db) == []
    with db.transaction() as s:
        assert operator_for(s, cookie, now=now) is None
    code, _, err = run(capsys, monkeypatch, data, "admin", "delete", "alice")
    assert code == 2
    assert_one_line_error(err, "no console administrator named 'alice'")
