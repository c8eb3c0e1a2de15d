"""The agent-facing API: fetch the policy, register, check in as a registered device.

Before registration an agent authenticates with the deployment token in the
`X-Deployment-Token` header (never in the URL, which proxies and access logs keep).
Registration returns the device's own credential; from then on the agent sends
`Authorization: Bearer <credential>` and the token is not used again.
Every call carries the agent's phase and last error, for `device list`.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field, SecretStr
from sqlalchemy.orm import Session

from authority.api.deps import bearer_credential, certs, request_id, run_in_transaction
from authority.attempts import REGISTERED, REGISTERED_UNMAPPED, record_apart
from authority.db import utcnow
from authority.errors import AuthorityError
from authority.policies import agent_document, policy_for_token, require_active
from authority.registration import (
    DeviceReport,
    Registration,
    RegistrationRequest,
    device_for_credential,
    record_report,
    register,
)
from authority.sign_in import SignInRequest, sign_in
from authority.users import directory_for

log = logging.getLogger("authority")

router = APIRouter(prefix="/api/v1", tags=["agent"])

OsName = Literal["linux", "macos", "windows"]
Phase = Literal[
    "unconfigured",
    "awaiting_policy",
    "awaiting_registration",
    "awaiting_sign_in",
    "backing_up",
    "stopped",
]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "missing or invalid token or credential "
        "(`token_missing`, `token_malformed`, `credential_missing`, `credential_invalid`)"
    },
    403: {"description": "`org_deactivated`, `sign_in_required`"},
    404: {"description": "`token_unknown`, `token_rotated`"},
    409: {"description": "`device_in_other_org`, `device_cloned`"},
    410: {"description": "`policy_deleted`"},
    422: {"description": "`invalid_request` and other validation codes"},
    503: {
        "description": "`overloaded`, `database_busy`, `internal_error`; always with Retry-After"
    },
}
# An LDAP organization asks its directory; a refusal is the agent's to retry every
# `registration_retry_seconds`, a 503 after Retry-After.
REGISTER_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    403: {
        "description": "`org_deactivated`, `sign_in_required`; `directory_user_disabled` "
        "(LDAP: the user's account is disabled in the directory)"
    },
    404: {
        "description": "`token_unknown`, `token_rotated`; `directory_user_not_found` (LDAP: "
        "no entry matches the username; the message names the user and the organization)"
    },
    409: {
        "description": "`device_in_other_org`, `device_cloned`; `directory_user_ambiguous` "
        "(LDAP: the user filter matches more than one entry)"
    },
    422: {
        "description": "`invalid_request`, `invalid_device_guid`, `invalid_username`, "
        "`username_not_email` (local organizations), `invalid_input`"
    },
    503: {
        "description": "`overloaded`, `database_busy`, `internal_error`; LDAP: "
        "`directory_unavailable` (down, slow or TLS failure), `directory_bind_failed`, "
        "`directory_search_failed`, `directory_misconfigured`; always with Retry-After"
    },
}


class AgentReport(BaseModel):
    """What the agent says about itself on every contact."""

    device_guid: str | None = Field(
        None,
        description="the device's GUID (a UUID the agent made); "
        "omit for a dry run such as `doctor`",
    )
    device_name: str = Field("", max_length=255)
    agent_version: str = Field("", max_length=64)
    phase: Phase | None = None
    last_error: str | None = Field(None, max_length=4096)


class PolicyRequest(AgentReport):
    os: OsName


class RegisterRequest(AgentReport):
    device_guid: str  # required here
    os: OsName
    username: str = Field(..., min_length=1, max_length=256)
    user_home: str = Field(..., min_length=1, max_length=4096)
    hardware_id: str | None = Field(
        None,
        max_length=128,
        description="a digest of the machine's identity; a registered GUID arriving from "
        "other hardware is refused with `device_cloned`",
    )


class RegisterResponse(BaseModel):
    device_guid: str
    credential: str = Field(description="the device's secret; shown once, send as a Bearer token")
    org: str
    username: str
    user_created: bool
    already_registered: bool
    registered_at: str
    warning: str | None = Field(
        None,
        description="registered, but with something for an administrator to fix: in an SSO "
        "organization, a username no user had, so the device's new user cannot sign in or "
        "restore until the mapping is fixed",
    )

    @classmethod
    def of(cls, result: Registration, org: str) -> RegisterResponse:
        """The answer to a registration, however the device got it (token or sign-in)."""
        assert result.device.registered_at is not None
        return cls(
            device_guid=result.device.guid,
            credential=result.credential,
            org=org,
            username=result.user.username,
            user_created=result.user_created,
            already_registered=result.already_registered,
            registered_at=result.device.registered_at.isoformat(),
            warning=result.warning,
        )


def _report(body: AgentReport, os_name: str) -> DeviceReport:
    return DeviceReport(
        guid=body.device_guid or "",
        name=body.device_name,
        os=os_name,
        agent_version=body.agent_version,
        phase=body.phase,
        last_error=body.last_error,
    )


@router.post("/deploy/policy", responses=ERRORS)
def fetch_policy(
    body: PolicyRequest,
    request: Request,
    x_deployment_token: str | None = Header(None),
) -> dict[str, Any]:
    """The deployment policy for the agent's OS, found by the token; records the device's report."""
    pins = certs(request).pins()

    def work(session: Session) -> dict[str, Any]:
        policy = policy_for_token(session, x_deployment_token)
        # Everything read before the report's write: SQLite's write lock is then held only
        # from that write to the commit, which a storm of installs queues behind.
        document = agent_document(policy.org, policy, body.os, pins)
        if body.device_guid:
            record_report(session, policy.org, _report(body, body.os))
        return document

    return run_in_transaction(request, work)


@router.post("/deploy/register", responses=REGISTER_ERRORS, response_model=RegisterResponse)
def register_device(
    body: RegisterRequest,
    request: Request,
    x_deployment_token: str | None = Header(None),
) -> RegisterResponse:
    """Register the device silently; idempotent by device GUID. Every attempt is recorded."""
    directories = partial(directory_for, retry_after=request.app.state.limits.retry_after)

    def work(session: Session) -> RegisterResponse:
        policy = policy_for_token(session, x_deployment_token)
        result = register(
            session,
            policy,
            RegistrationRequest(
                device=_report(body, body.os),
                username=body.username,
                user_home=body.user_home,
                hardware_id=body.hardware_id,
            ),
            directories=directories,
        )
        return RegisterResponse.of(result, policy.org.name)

    record = partial(
        record_apart,
        request.app.state.db,
        x_deployment_token,
        device_guid=body.device_guid,
        username=body.username,
    )
    try:
        answer = run_in_transaction(request, work)
    except AuthorityError as exc:
        log.info(
            "rid=%s registration of device %r refused: %s [%s]",  # %r: the GUID is unchecked
            request_id(request),
            body.device_guid,
            exc.message,
            exc.code,
        )
        record(outcome=exc.code, message=exc.message)
        raise
    except Exception:
        # The app's guard answers 503 internal_error and logs the traceback; say so here too.
        record(
            outcome="internal_error",
            message=f"unexpected error; see request {request_id(request)} in authority.log",
        )
        raise
    if answer.warning:
        log.warning("rid=%s device %s: %s", request_id(request), answer.device_guid, answer.warning)
    again = " again (its previous credential no longer works)" if answer.already_registered else ""
    record(
        outcome=REGISTERED_UNMAPPED if answer.warning else REGISTERED,
        message=f"registered{again} to user {answer.username!r}"
        + (f"; {answer.warning}" if answer.warning else ""),
        org_name=answer.org,
    )
    return answer


@router.post("/device/policy", responses=ERRORS)
def device_policy(
    body: PolicyRequest,
    request: Request,
    authorization: str | None = Header(None),
) -> dict[str, Any]:
    """The policy for a registered device. A rotated token does not affect it; a deleted
    policy leaves it on the default settings; a deactivated organization stops it."""
    credential = bearer_credential(authorization)
    pins = certs(request).pins()

    def work(session: Session) -> dict[str, Any]:
        device = device_for_credential(session, credential)
        require_active(device.org)
        document = agent_document(device.org, device.org.policy, body.os, pins)  # reads first
        report = _report(body, body.os)
        record_report(
            session,
            device.org,
            DeviceReport(
                guid=device.guid,
                name=report.name,
                os=report.os,
                agent_version=report.agent_version,
                phase=report.phase,
                last_error=report.last_error,
            ),
            device=device,
        )
        return document

    return run_in_transaction(request, work)


# Manual registration (authority/sign_in.py), appended here after the routes above.


class SignInBody(RegisterRequest):
    password: SecretStr = Field(
        ...,
        min_length=1,
        max_length=1024,
        description="the user's password: checked, never stored, logged or returned",
    )


SIGN_IN_ERRORS: dict[int | str, dict[str, Any]] = {
    **REGISTER_ERRORS,
    401: {
        "description": "`token_missing`, `token_malformed`; `sign_in_failed`: wrong username "
        "or password (the same answer for a user who does not exist), counted"
    },
    403: {
        "description": "`org_deactivated`; `password_reset_required` (local: the password was "
        "generated and never shown; an administrator must reset it); "
        "`sso_sign_in_not_supported`; `directory_user_disabled` (LDAP)"
    },
    429: {
        "description": "`sign_in_locked`: 5 failed sign-ins within 15 minutes lock the "
        "username for 15 minutes; with Retry-After"
    },
}


@router.post("/deploy/sign-in", responses=SIGN_IN_ERRORS, response_model=RegisterResponse)
def sign_in_device(
    body: SignInBody,
    request: Request,
    x_deployment_token: str | None = Header(None),
) -> RegisterResponse:
    """Manual registration: the user's password, checked by the organization's method, then
    the device registered as by `/deploy/register`. Any policy accepts it."""
    directories = partial(directory_for, retry_after=request.app.state.limits.retry_after)

    def work(session: Session) -> RegisterResponse | AuthorityError:
        policy = policy_for_token(session, x_deployment_token)
        outcome = sign_in(
            session,
            policy,
            SignInRequest(
                device=_report(body, body.os),
                username=body.username,
                password=body.password.get_secret_value(),
                user_home=body.user_home,
                hardware_id=body.hardware_id,
            ),
            now=utcnow(),
            directories=directories,
        )
        if isinstance(outcome, AuthorityError):
            return outcome
        return RegisterResponse.of(outcome, policy.org.name)

    record = partial(
        record_apart,
        request.app.state.db,
        x_deployment_token,
        device_guid=body.device_guid,
        username=body.username,
    )
    try:
        answer = run_in_transaction(request, work)
        if isinstance(answer, AuthorityError):
            raise answer  # only now, its transaction committed: the failure stays counted
    except AuthorityError as exc:
        record(outcome=exc.code, message=exc.message)
        raise
    record(
        outcome=REGISTERED,
        message=f"registered by sign-in to user {answer.username!r}",
        org_name=answer.org,
    )
    return answer


__all__ = ["router"]
