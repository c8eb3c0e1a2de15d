"""Deployment policies: one per organization, found by agents through their token.

A token resolves to exactly one of: the policy (its organization active), or a distinct
refusal the agent can log and an administrator can act on:

    token_unknown      404  never issued here (a typo, or another authority's token)
    token_rotated      404  replaced by `policy rotate-token`; the deployment was disabled
    policy_deleted     410  the organization's policy was deleted
    org_deactivated    403  the organization was deactivated, so its policy stops working
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, joinedload

from authority.db import DetectionScript, Organization, Policy, RetiredToken, utcnow
from authority.errors import Conflict, Forbidden, Gone, InvalidInput, NotFound, Unauthorized
from authority.install_args import InstallArgs
from authority.orgs import find_org
from authority.scripts import ScriptFile, parse_os
from authority.settings import SETTINGS, complete, defaults, parse_assignments

# Built once: every agent's policy fetch runs it, and building a statement anew cost more
# than running it (authority/registration.py says by how much).
_POLICY_BY_TOKEN = (
    select(Policy)
    .where(Policy.token == bindparam("token"))
    .options(joinedload(Policy.org))  # every caller checks that the organization is active
)

POLICY_DOCUMENT_VERSION = 1


def new_token() -> str:
    return str(uuid.uuid4())


def find_policy(session: Session, org_name: str) -> Policy:
    org = find_org(session, org_name)
    if org.policy is None:
        raise NotFound(
            f"organization {org_name!r} has no deployment policy", code="policy_not_found"
        )
    return org.policy


def create_policy(
    session: Session, org_name: str, *, manual: bool, scripts: list[ScriptFile]
) -> Policy:
    org = find_org(session, org_name)
    if org.policy is not None:
        raise Conflict(
            f"organization {org_name!r} already has a deployment policy (one per organization); "
            "change it with `policy set` or delete it first",
            code="policy_exists",
        )
    seen: set[str] = set()
    for script in scripts:
        if script.os in seen:
            raise InvalidInput(f"--script {script.os} given twice")
        seen.add(script.os)
    policy = Policy(org=org, token=new_token(), manual=manual, settings=defaults())
    policy.scripts = [
        DetectionScript(
            os=s.os,
            filename=s.filename,
            interpreter=s.interpreter,
            content=s.content,
            sha256=s.sha256,
        )
        for s in scripts
    ]
    session.add(policy)
    session.flush()
    return policy


def set_settings(session: Session, org_name: str, assignments: list[str]) -> Policy:
    policy = find_policy(session, org_name)
    changes = parse_assignments(assignments)
    merged = complete(policy.settings)
    merged.update(changes)
    policy.settings = merged  # a new dict, so SQLAlchemy sees the change
    policy.updated_at = utcnow()
    return policy


def rotate_token(session: Session, org_name: str) -> Policy:
    policy = find_policy(session, org_name)
    session.add(RetiredToken(token=policy.token, org_name=org_name, reason="token_rotated"))
    policy.token = new_token()
    policy.updated_at = utcnow()
    return policy


def delete_policy(session: Session, org_name: str) -> None:
    policy = find_policy(session, org_name)
    session.add(RetiredToken(token=policy.token, org_name=org_name, reason="policy_deleted"))
    session.delete(policy)


def _well_formed_token(token: str | None) -> str:
    if not token:
        raise Unauthorized("no deployment token in the request", code="token_missing")
    try:
        return str(uuid.UUID(token.strip()))
    except ValueError:
        raise Unauthorized("the deployment token is not a UUID", code="token_malformed") from None


def policy_for_token(session: Session, token: str | None) -> Policy:
    """The active policy a token names, or the reason it names none (see module docstring)."""
    wanted = _well_formed_token(token)
    policy = session.scalar(_POLICY_BY_TOKEN, {"token": wanted})
    if policy is None:
        retired = session.get(RetiredToken, wanted)
        if retired is None:
            raise NotFound("no deployment policy has this token", code="token_unknown")
        when = retired.retired_at.strftime("%Y-%m-%d %H:%M UTC")
        if retired.reason == "policy_deleted":
            raise Gone(
                f"the deployment policy of organization {retired.org_name!r} was deleted on {when}",
                code="policy_deleted",
            )
        raise NotFound(
            f"this token of organization {retired.org_name!r} was replaced on {when}; "
            "deploy with the policy's new token",
            code="token_rotated",
        )
    require_active(policy.org)
    return policy


def require_active(org: Organization) -> None:
    if not org.active:
        raise Forbidden(
            f"organization {org.name!r} is deactivated, so its deployment policy does not work",
            code="org_deactivated",
        )


def settings_of(policy: Policy | None) -> dict[str, Any]:
    return complete(policy.settings) if policy is not None else defaults()


def agent_document(
    org: Organization, policy: Policy | None, os_name: str, pins: list[dict[str, str]]
) -> dict[str, Any]:
    """The policy as an agent on `os_name` receives it (docs/contract.md, "Policy document")."""
    os_name = parse_os(os_name)
    script = next((s for s in policy.scripts if s.os == os_name), None) if policy else None
    return {
        "version": POLICY_DOCUMENT_VERSION,
        "org": {"name": org.name, "auth": org.auth},
        "registration": "manual" if policy is not None and policy.manual else "silent",
        "detection": None
        if script is None
        else {
            "os": script.os,
            "filename": script.filename,
            "interpreter": script.interpreter,
            "script": script.content,
            "sha256": script.sha256,
        },
        "settings": settings_of(policy),
        "tls_pins": pins,
        "updated_at": policy.updated_at.isoformat() if policy else None,
    }


def install_args(policy: Policy, deployment_url: str, pins: list[dict[str, str]]) -> InstallArgs:
    return InstallArgs(
        deployment_url=deployment_url,
        token=policy.token,
        ssl_whitelist=tuple(p["sha1"] for p in pins),
    )


def admin_view(policy: Policy, deployment_url: str, pins: list[dict[str, str]]) -> dict[str, Any]:
    """What `policy show` prints: everything in the policy, and its installer arguments."""
    return {
        "org": policy.org.name,
        "auth": policy.org.auth,
        "org_active": policy.org.active,
        "registration": "manual" if policy.manual else "silent",
        "token": policy.token,
        "deployment_url": deployment_url,
        "settings": settings_of(policy),
        "scripts": [
            {
                "os": s.os,
                "filename": s.filename,
                "interpreter": s.interpreter,
                "sha256": s.sha256,
            }
            for s in policy.scripts
        ],
        "tls_pins": pins,
        "install_args": install_args(policy, deployment_url, pins).as_dict(),
        "created_at": policy.created_at.isoformat(),
        "updated_at": policy.updated_at.isoformat(),
    }


__all__ = [
    "POLICY_DOCUMENT_VERSION",
    "SETTINGS",
    "admin_view",
    "agent_document",
    "create_policy",
    "delete_policy",
    "find_policy",
    "install_args",
    "new_token",
    "policy_for_token",
    "require_active",
    "rotate_token",
    "set_settings",
    "settings_of",
]
