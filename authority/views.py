"""Text renderings of what admin commands print (their --json form is the raw data)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def _table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    return dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")


def print_policy(view: dict[str, Any]) -> str:
    args = view["install_args"]
    scripts = [
        f"    {s['os']:8} {s['filename']} ({' '.join(s['interpreter'])}) sha256={s['sha256']}"
        for s in view["scripts"]
    ] or ["    none (agents on every OS report that no detection script is set)"]
    settings = [f"    {k} = {json_value(v)}" for k, v in view["settings"].items()]
    state = (
        "" if view["org_active"] else "  ** organization deactivated: the policy does not work **"
    )
    return "\n".join(
        [
            f"Policy of organization {view['org']!r}: {view['auth']} authentication, "
            f"{view['registration']} registration{state}",
            f"  token:          {view['token']}",
            f"  deployment URL: {view['deployment_url']}",
            "  detection scripts:",
            *scripts,
            "  settings:",
            *settings,
            "",
            "Installer arguments",
            "  CP_ARGS:",
            f"    {args['cp_args']}",
            "  Windows (SCCM, Intune):",
            f"    {args['msiexec']}",
            "  macOS (Jamf, Munki), as the file",
            "  /Library/Application Support/Holdfast/conf/deploy.properties:",
            *[f"    {line}" for line in args["deploy_properties"].splitlines()],
            "  Linux:",
            f"    {args['linux']}",
        ]
    )


def json_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(none)"
    return str(value)


def format_tls(pins: list[dict[str, str]]) -> str:
    return "\n".join(f"{p['role']:8} sha1={p['sha1']} sha256={p['sha256']}" for p in pins)


def format_orgs(orgs: list[dict[str, Any]]) -> str:
    rows = [
        [
            o["name"],
            o["auth"],
            "active" if o["active"] else "deactivated",
            "yes" if o["has_policy"] else "no",
            o["parent"] or "-",
        ]
        for o in orgs
    ]
    return _table(rows, ["NAME", "AUTH", "STATE", "POLICY", "PARENT"]) or "No organizations."


def format_users(users: list[dict[str, Any]]) -> str:
    rows = [
        [
            u["username"],
            u["org"],
            "yes" if u["can_sign_in"] else f"no ({u['cannot_sign_in_because']})",
            str(len(u["devices"])),
        ]
        for u in users
    ]
    return _table(rows, ["USERNAME", "ORG", "CAN SIGN IN", "DEVICES"]) or "No users."


def format_devices(devices: list[dict[str, Any]]) -> str:
    rows = [
        [
            d["guid"][:8],
            d["name"] or "-",
            d["org"],
            d["username"] or "-",
            _when(d["registered_at"]) if d["registered"] else "not registered",
            d["phase"] or "-",
            d["last_error"] or "",
            _attempt(d.get("last_attempt")),
        ]
        for d in devices
    ]
    header = ["GUID", "NAME", "ORG", "USER", "REGISTERED", "PHASE", "LAST ERROR", "LAST ATTEMPT"]
    return _table(rows, header) or "No devices."


def _attempt(attempt: dict[str, Any] | None) -> str:
    if not attempt:
        return ""
    return f"{_when(attempt['at'])} {attempt['outcome']}: {attempt['message']}"


def format_attempts(attempts: list[dict[str, Any]]) -> str:
    rows = [
        [
            _when(a["at"]),
            a["device_guid"][:8],
            a["org"],
            a["username"],
            a["outcome"],
            a["message"],
        ]
        for a in attempts
    ]
    header = ["TIME", "GUID", "ORG", "USER", "OUTCOME", "MESSAGE"]
    return _table(rows, header) or "No registration attempts."


def format_admin_accounts(accounts: list[dict[str, Any]]) -> str:
    rows = [
        [
            a["name"],
            a["role"],
            _when(a["created_at"]),
            _when(a["last_sign_in_at"]) if a["last_sign_in_at"] else "never",
            f"locked until {_when(a['locked_until'])} UTC" if a["locked_until"] else "-",
        ]
        for a in accounts
    ]
    header = ["NAME", "ROLE", "CREATED", "LAST SIGN-IN", "LOCK"]
    return _table(rows, header) or (
        "No console administrators (holdfast-authority admin create NAME makes one)."
    )


__all__ = [
    "format_admin_accounts",
    "format_attempts",
    "format_devices",
    "format_orgs",
    "format_tls",
    "format_users",
    "json_value",
    "print_policy",
]
