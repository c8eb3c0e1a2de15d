"""The agent-facing API: fetch the policy, register, check in as a registered device.

Before registration an agent authenticates with the deployment token in the
`X-Deployment-Token` header (never in the URL, which proxies and access logs keep).
Registration returns the device's own credential; from then on the agent sends
`Authorization: Bearer <credential>` and the token is not used again.
Every call carries the agent's phase and last error, for `device list`.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from authority.api.deps import certs, run_in_transaction
from authority.errors import Unauthorized
from authority.policies import agent_document, policy_for_token, require_active
from authority.registration import (
    DeviceReport,
    RegistrationRequest,
    device_for_credential,
    record_report,
    register,
)

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
    501: {"description": "`auth_not_implemented`"},
    503: {
        "description": "`overloaded`, `database_busy`, `internal_error`; always with Retry-After"
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


def _report(body: AgentReport, os_name: str) -> DeviceReport:
    return DeviceReport(
        guid=body.device_guid or "",
        name=body.device_name,
        os=os_name,
        agent_version=body.agent_version,
        phase=body.phase,
        last_error=body.last_error,
    )


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized(
            "expected `Authorization: Bearer <device credential>`", code="credential_missing"
        )
    return value.strip()


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
        if body.device_guid:
            record_report(session, policy.org, _report(body, body.os))
        return agent_document(policy.org, policy, body.os, pins)

    return run_in_transaction(request, work)


@router.post("/deploy/register", responses=ERRORS, response_model=RegisterResponse)
def register_device(
    body: RegisterRequest,
    request: Request,
    x_deployment_token: str | None = Header(None),
) -> RegisterResponse:
    """Register the device silently; idempotent by device GUID."""

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
        )
        assert result.device.registered_at is not None
        return RegisterResponse(
            device_guid=result.device.guid,
            credential=result.credential,
            org=policy.org.name,
            username=result.user.username,
            user_created=result.user_created,
            already_registered=result.already_registered,
            registered_at=result.device.registered_at.isoformat(),
        )

    return run_in_transaction(request, work)


@router.post("/device/policy", responses=ERRORS)
def device_policy(
    body: PolicyRequest,
    request: Request,
    authorization: str | None = Header(None),
) -> dict[str, Any]:
    """The policy for a registered device. A rotated token does not affect it; a deleted
    policy leaves it on the default settings; a deactivated organization stops it."""
    credential = _bearer(authorization)
    pins = certs(request).pins()

    def work(session: Session) -> dict[str, Any]:
        device = device_for_credential(session, credential)
        require_active(device.org)
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
        )
        return agent_document(device.org, device.org.policy, body.os, pins)

    return run_in_transaction(request, work)


__all__ = ["router"]
