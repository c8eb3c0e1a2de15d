"""Who may do what on the control channel: the rules, without sockets."""

from __future__ import annotations

import pwd

import pytest

from agent.control import Peer, authorize

NOBODY = pwd.getpwnam("nobody")
ROOT = Peer(pid=1, uid=0, gid=0)
USER = Peer(pid=2, uid=NOBODY.pw_uid, gid=NOBODY.pw_gid)


def decide(command: str, peer: Peer, **overrides: object) -> tuple[bool, str]:
    values: dict[str, object] = {
        "registered_user_home": None,
        "registered_username": None,
        "console_users": [],
        "allow_user_stop": True,
    }
    values.update(overrides)
    decision = authorize(command, peer, **values)  # type: ignore[arg-type]
    return decision.allowed, decision.reason


@pytest.mark.parametrize("command", ["status", "stop", "start", "backup-now", "sign-in"])
def test_root_may_do_anything(command: str) -> None:
    assert decide(command, ROOT, allow_user_stop=False)[0]


def test_anyone_may_ask_for_status() -> None:
    assert decide("status", USER)[0]


def test_the_registered_user_may_stop_and_start_found_by_home() -> None:
    for command in ("stop", "start", "backup-now"):
        assert decide(command, USER, registered_user_home=NOBODY.pw_dir)[0]


def test_the_registered_user_is_found_by_the_local_part_of_an_email_username() -> None:
    assert decide("stop", USER, registered_username="nobody@example.com")[0]


def test_another_user_is_refused_naming_them() -> None:
    allowed, reason = decide("stop", USER, registered_user_home="/home/jdoe")
    assert not allowed
    assert "nobody is not this device's user" in reason


def test_before_registration_a_user_with_a_session_may_stop() -> None:
    assert decide("stop", USER, console_users=["nobody"])[0]
    assert not decide("stop", USER, console_users=["alice"])[0]


def test_the_policy_can_forbid_user_stop_and_the_refusal_says_so() -> None:
    allowed, reason = decide(
        "stop", USER, registered_user_home=NOBODY.pw_dir, allow_user_stop=False
    )
    assert not allowed
    assert "policy does not allow users to stop" in reason
    assert decide("start", USER, registered_user_home=NOBODY.pw_dir, allow_user_stop=False)[0]


def test_the_detected_user_with_a_session_may_sign_in() -> None:
    assert decide("sign-in", USER, console_users=["nobody"], detected_user_home=NOBODY.pw_dir)[0]
    by_name = decide(
        "sign-in", USER, console_users=["nobody"], detected_username="nobody@example.com"
    )
    assert by_name[0]


def test_another_user_with_a_session_may_not_sign_in_the_detected_users_device() -> None:
    # Signing in makes the detected home (read by the daemon as root) the signer's backup.
    allowed, reason = decide(
        "sign-in",
        USER,
        console_users=["nobody", "alice"],
        detected_username="alice@example.com",
        detected_user_home="/home/alice",
    )
    assert not allowed
    assert "nobody is not the user detected on this device (alice@example.com)" in reason


def test_sign_in_needs_a_session_on_the_device() -> None:
    allowed, reason = decide("sign-in", USER, detected_user_home=NOBODY.pw_dir)
    assert not allowed
    assert "nobody has no session on this device" in reason
