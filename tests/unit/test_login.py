"""`holdfast login` without a daemon: where the username and password come from, exit codes."""

from __future__ import annotations

import io

import pytest

from agent.errors import AgentError, PermanentError, Refused, TransientError, UsageError
from agent.login import read_credentials
from agent.logs import REDACTED, Redactor
from agent.registration import sign_in_failure


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_suggests_the_detected_user_and_asks_for_the_password() -> None:
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return ""  # Enter: the suggestion

    def ask_secret(prompt: str) -> str:
        prompts.append(prompt)
        return "pa55word"

    name, password = read_credentials(
        None, "jdoe@example.com", stdin=Terminal(), ask=ask, ask_secret=ask_secret
    )
    assert (name, password) == ("jdoe@example.com", "pa55word")
    assert prompts == ["Username [jdoe@example.com]: ", "Password for jdoe@example.com: "]


def test_a_terminal_takes_the_typed_username_over_the_detected_one() -> None:
    name, _ = read_credentials(
        None,
        "jdoe",
        stdin=Terminal(),
        ask=lambda _p: " ann@example.com ",
        ask_secret=lambda _p: "pa55word",
    )
    assert name == "ann@example.com"


def test_stdin_that_is_not_a_terminal_gives_the_password_as_its_first_line() -> None:
    stdin = io.StringIO("pa55 word\r\nsecond line\n")
    assert read_credentials(None, "jdoe", stdin=stdin) == ("jdoe", "pa55 word")
    stdin = io.StringIO("pa55word\n")
    assert read_credentials("ann", "jdoe", stdin=stdin) == ("ann", "pa55word")


@pytest.mark.parametrize(
    ("username", "detected", "stdin", "problem"),
    [
        (None, None, "pa55word\n", "--username"),
        ("ann", "jdoe", "", "no password"),
        ("ann", "jdoe", "\n", "no password"),
    ],
)
def test_missing_username_or_password_is_bad_usage(
    username: str | None, detected: str | None, stdin: str, problem: str
) -> None:
    with pytest.raises(UsageError, match=problem):
        read_credentials(username, detected, stdin=io.StringIO(stdin))


@pytest.mark.parametrize(
    ("error", "kind", "exit_code"),
    [
        (PermanentError("sign_in_failed", "wrong username or password"), AgentError, 1),
        (TransientError("sign_in_locked", "locked for 15 more minutes", 900.0), Refused, 4),
        (PermanentError("password_reset_required", "an administrator must reset it"), Refused, 4),
        (PermanentError("sso_sign_in_not_supported", "SSO"), Refused, 4),
        (PermanentError("username_not_email", "e-mail addresses"), UsageError, 2),
        (TransientError("connect_failed", "cannot reach the authority"), AgentError, 1),
    ],
)
def test_the_authoritys_answer_decides_the_exit_code(
    error: PermanentError | TransientError, kind: type[AgentError], exit_code: int
) -> None:
    failure = sign_in_failure(error)
    assert type(failure) is kind
    assert failure.exit_code == exit_code
    assert error.message in failure.message


def test_a_password_is_redacted_while_registered_and_forgotten_after() -> None:
    redactor = Redactor()
    redactor.add("pa55word!")
    assert redactor.scrub("sent pa55word! to the authority") == f"sent {REDACTED} to the authority"
    redactor.discard("pa55word!")
    assert redactor.scrub("pa55word!") == "pa55word!"
