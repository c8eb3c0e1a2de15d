"""Organizations and their one deployment policy, as agents find it by token."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from authority.db import Database, Organization
from authority.errors import Conflict, Forbidden, Gone, InvalidInput, NotFound, Unauthorized
from authority.orgs import LdapSettings, create_org, deactivate_org, find_org, list_orgs
from authority.policies import (
    create_policy,
    delete_policy,
    find_policy,
    policy_for_token,
    rotate_token,
    set_settings,
)
from authority.scripts import ScriptFile
from authority.settings import defaults

MakePolicy = Callable[..., str]
LDAP = LdapSettings(url="ldaps://ldap.example.com", base_dn="dc=example,dc=com")


def script(os_name: str) -> ScriptFile:
    return ScriptFile(os_name, "detect.sh", ["/bin/bash"], "echo hi\n", "0" * 64)


# Organizations


def test_created_organization_is_listed_active_without_policy(database: Database) -> None:
    with database.transaction() as s:
        create_org(s, "Acme", "local")
    with database.transaction() as s:
        (org,) = list_orgs(s)
        assert (org.name, org.auth, org.active, org.policy) == ("Acme", "local", True, None)


def test_second_organization_with_the_same_name_is_refused(database: Database) -> None:
    with database.transaction() as s:
        create_org(s, "Acme", "local")
    with pytest.raises(Conflict) as caught, database.transaction() as s:
        create_org(s, "Acme", "sso")
    assert caught.value.code == "org_exists"
    assert "'Acme'" in caught.value.message
    with database.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Organization)) == 1
        assert find_org(s, "Acme").auth == "local"


def test_unknown_authentication_method_is_refused_listing_the_known_ones(
    database: Database,
) -> None:
    with pytest.raises(InvalidInput, match="local, ldap, sso"), database.transaction() as s:
        create_org(s, "Acme", "kerberos")


@pytest.mark.parametrize("name", ["", " Acme", "Acme ", "A\tB", "x" * 129])
def test_unusable_organization_name_is_refused(database: Database, name: str) -> None:
    with pytest.raises(InvalidInput, match="organization name"), database.transaction() as s:
        create_org(s, name, "local")


def test_ldap_organization_needs_directory_settings(database: Database) -> None:
    with (
        pytest.raises(InvalidInput, match="--ldap-url and --ldap-base-dn"),
        database.transaction() as s,
    ):
        create_org(s, "Acme", "ldap")


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (LdapSettings(url="", base_dn="dc=example,dc=com"), "--ldap-url"),
        (LdapSettings(url="https://ldap.example.com", base_dn="dc=x"), "ldap:// or ldaps://"),
        (LdapSettings(url="ldap://ldap.example.com", base_dn="  "), "--ldap-base-dn"),
        (
            LdapSettings(url="ldap://h", base_dn="dc=x", user_filter="(uid=%s)"),
            "{username}",
        ),
        (
            LdapSettings(url="ldap://h", base_dn="dc=x", bind_dn="cn=svc,dc=x"),
            "--ldap-bind-password-file",
        ),
    ],
)
def test_incomplete_ldap_settings_are_refused(
    database: Database, settings: LdapSettings, complaint: str
) -> None:
    with pytest.raises(InvalidInput) as caught, database.transaction() as s:
        create_org(s, "Acme", "ldap", ldap=settings)
    assert complaint in caught.value.message
    with database.transaction() as s:
        assert list_orgs(s) == []


def test_ldap_bind_password_file_must_exist(database: Database, tmp_path: Path) -> None:
    settings = LdapSettings(
        url="ldap://h",
        base_dn="dc=x",
        bind_dn="cn=svc,dc=x",
        bind_password_file=str(tmp_path / "missing"),
    )
    with pytest.raises(InvalidInput, match="does not exist"), database.transaction() as s:
        create_org(s, "Acme", "ldap", ldap=settings)


def test_ldap_organization_keeps_its_directory_settings(database: Database) -> None:
    with database.transaction() as s:
        create_org(s, "Acme", "ldap", ldap=LDAP)
    with database.transaction() as s:
        stored = find_org(s, "Acme").ldap
        assert stored is not None
        assert stored["url"] == "ldaps://ldap.example.com"
        assert "{username}" in stored["user_filter"]


def test_ldap_settings_for_a_local_organization_are_refused(database: Database) -> None:
    with pytest.raises(InvalidInput, match="--auth ldap only"), database.transaction() as s:
        create_org(s, "Acme", "local", ldap=LDAP)


def test_unknown_organization_is_not_found(database: Database) -> None:
    with pytest.raises(NotFound) as caught, database.transaction() as s:
        find_org(s, "Nope")
    assert caught.value.code == "org_not_found"
    assert "'Nope'" in caught.value.message


# Policies


def test_new_policy_has_a_uuid_token_and_default_settings(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    assert str(uuid.UUID(token)) == token
    with database.transaction() as s:
        policy = find_policy(s, "Acme")
        assert policy.settings == defaults()
        assert policy.manual is False


def test_second_policy_for_an_organization_is_refused(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    with pytest.raises(Conflict) as caught, database.transaction() as s:
        create_policy(s, "Acme", manual=True, scripts=[])
    assert caught.value.code == "policy_exists"
    with database.transaction() as s:
        policy = find_policy(s, "Acme")
        assert (policy.token, policy.manual) == (token, False)


def test_policy_for_an_unknown_organization_is_refused(database: Database) -> None:
    with pytest.raises(NotFound, match="'Nope'"), database.transaction() as s:
        create_policy(s, "Nope", manual=False, scripts=[])


def test_two_scripts_for_the_same_os_are_refused(database: Database) -> None:
    with database.transaction() as s:
        create_org(s, "Acme", "local")
    with pytest.raises(InvalidInput, match="linux given twice"), database.transaction() as s:
        create_policy(s, "Acme", manual=False, scripts=[script("linux"), script("linux")])
    with pytest.raises(NotFound), database.transaction() as s:
        find_policy(s, "Acme")


def test_policy_keeps_one_script_per_os(database: Database) -> None:
    with database.transaction() as s:
        create_org(s, "Acme", "local")
        create_policy(s, "Acme", manual=False, scripts=[script("windows"), script("linux")])
    with database.transaction() as s:
        assert [x.os for x in find_policy(s, "Acme").scripts] == ["linux", "windows"]


def test_policy_set_changes_only_the_named_settings(
    database: Database, make_policy: MakePolicy
) -> None:
    make_policy("Acme")
    with database.transaction() as s:
        set_settings(s, "Acme", ["allow_user_stop=no", "exclude="])
    with database.transaction() as s:
        settings = find_policy(s, "Acme").settings
    assert settings == {**defaults(), "allow_user_stop": False, "exclude": []}


def test_policy_set_with_one_bad_assignment_changes_nothing(
    database: Database, make_policy: MakePolicy
) -> None:
    make_policy("Acme")
    with pytest.raises(InvalidInput, match="colour"), database.transaction() as s:
        set_settings(s, "Acme", ["allow_user_stop=false", "colour=blue"])
    with database.transaction() as s:
        assert find_policy(s, "Acme").settings == defaults()


# Tokens


def test_token_finds_its_policy(database: Database, make_policy: MakePolicy) -> None:
    token = make_policy("Acme")
    with database.transaction() as s:
        assert policy_for_token(s, token).org.name == "Acme"


def test_token_pasted_in_upper_case_with_spaces_still_works(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    with database.transaction() as s:
        assert policy_for_token(s, f" {token.upper()} ").org.name == "Acme"


def test_unknown_token_is_not_found(database: Database, make_policy: MakePolicy) -> None:
    make_policy("Acme")
    with pytest.raises(NotFound) as caught, database.transaction() as s:
        policy_for_token(s, str(uuid.uuid4()))
    assert caught.value.code == "token_unknown"


@pytest.mark.parametrize("token", ["not-a-uuid", "12345", "6f1c2a9e-3b7d-4e2f-9a41"])
def test_malformed_token_is_unauthorized(database: Database, token: str) -> None:
    with pytest.raises(Unauthorized) as caught, database.transaction() as s:
        policy_for_token(s, token)
    assert caught.value.code == "token_malformed"


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_unauthorized(database: Database, token: str | None) -> None:
    with pytest.raises(Unauthorized) as caught, database.transaction() as s:
        policy_for_token(s, token)
    assert caught.value.code == "token_missing"


def test_rotated_token_stops_at_once_naming_the_organization(
    database: Database, make_policy: MakePolicy
) -> None:
    old = make_policy("Acme")
    with database.transaction() as s:
        new = rotate_token(s, "Acme").token
    assert new != old
    with pytest.raises(NotFound) as caught, database.transaction() as s:
        policy_for_token(s, old)
    assert caught.value.code == "token_rotated"
    assert "'Acme'" in caught.value.message
    with database.transaction() as s:
        assert policy_for_token(s, new).org.name == "Acme"


def test_deleted_policys_token_is_gone_naming_the_organization(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    with database.transaction() as s:
        delete_policy(s, "Acme")
    with pytest.raises(Gone) as caught, database.transaction() as s:
        policy_for_token(s, token)
    assert caught.value.code == "policy_deleted"
    assert "'Acme'" in caught.value.message


def test_deleted_policy_can_be_created_again_with_a_new_token(
    database: Database, make_policy: MakePolicy
) -> None:
    old = make_policy("Acme")
    with database.transaction() as s:
        delete_policy(s, "Acme")
    with database.transaction() as s:
        new = create_policy(s, "Acme", manual=False, scripts=[]).token
    assert new != old
    with database.transaction() as s:
        assert policy_for_token(s, new).org.name == "Acme"


def test_deactivated_organizations_token_is_forbidden(
    database: Database, make_policy: MakePolicy
) -> None:
    token = make_policy("Acme")
    with database.transaction() as s:
        deactivate_org(s, "Acme")
    with pytest.raises(Forbidden) as caught, database.transaction() as s:
        policy_for_token(s, token)
    assert caught.value.code == "org_deactivated"
    assert "'Acme'" in caught.value.message


def test_one_organizations_rotation_leaves_anothers_token_working(
    database: Database, make_policy: MakePolicy
) -> None:
    make_policy("Acme")
    other = make_policy("Globex")
    with database.transaction() as s:
        rotate_token(s, "Acme")
    with database.transaction() as s:
        assert policy_for_token(s, other).org.name == "Globex"
