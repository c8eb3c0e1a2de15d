"""What support staff should do about each failed check of `holdfast doctor`.

One sentence or two per failure, naming the command or setting that fixes it; kept apart
from the checks so the wording can be read, and reviewed, as a whole.
"""

from __future__ import annotations

POLICY_SHOW = "`holdfast-authority policy show --org ORG`"

_ARGUMENTS = {
    "missing": (
        "give the installer arguments: `holdfast doctor --deploy-args 'DEPLOYMENT_URL=...&"
        "DEPLOYMENT_POLICY_TOKEN=...&SSL_WHITELIST=...'` with the CP_ARGS string of "
        f"{POLICY_SHOW} on the authority, or install the agent with them "
        "(`holdfast install --deploy-args ...`)"
    ),
    "unreadable": (
        "run `holdfast doctor` as root (sudo): conf/deploy.properties holds the token and "
        "only the agent's service account may read it; or give --deploy-args"
    ),
    "invalid": (
        "correct that installer argument: copy the installer arguments whole from "
        f"{POLICY_SHOW} (CP_ARGS, or the deploy.properties form) and deploy them again"
    ),
}

_TOKEN_FIXES = {
    "token_unknown": (
        "this authority never issued the token (a typo, or another authority's token): copy "
        f"the current installer arguments from the policy view ({POLICY_SHOW}) and redeploy"
    ),
    "token_rotated": (
        "the token was rotated (`policy rotate-token`): copy the current installer arguments "
        f"from the policy view ({POLICY_SHOW}) and redeploy this device with them"
    ),
    "policy_deleted": (
        "the organization's policy was deleted: an administrator creates one "
        "(`holdfast-authority policy create --org ORG`) and this device is redeployed with "
        "its installer arguments"
    ),
    "org_deactivated": (
        "the organization is deactivated on the authority: if that was intended, do not "
        "deploy this device; otherwise an administrator must reactivate it (there is no "
        "command for it yet: docs/contract.md section 11)"
    ),
    "token_missing": _ARGUMENTS["invalid"],
    "token_malformed": _ARGUMENTS["invalid"],
    "no_such_endpoint": (
        "DEPLOYMENT_URL reaches a server that is not a Holdfast authority: check the host "
        f"and port against the deployment URL of {POLICY_SHOW}"
    ),
    "policy_invalid": (
        "the authority's policy format is not one this agent reads: install the agent "
        "version that matches the authority's"
    ),
    "invalid_request": (
        "the authority refused this agent's request: install the agent version that matches "
        "the authority's, and report it if they match"
    ),
}

_BUSY = (
    "the authority is up but could not answer now: run doctor again in a minute; if it "
    "persists, look up the request in the authority's authority.log"
)
_UNREACHED = (
    "the authority stopped answering between checks: run doctor again; if it persists, see "
    "the TCP and TLS fixes"
)

_DETECTION_FIXES = {
    "no_detection_script": (
        "an administrator gives the policy a detection script for this OS "
        "(`holdfast-authority policy create --org ORG --script OS=FILE`; an existing policy "
        "is deleted and created again for it, which gives it a new token)"
    ),
    "no_user_detected": (
        "the script found nobody: sign a user in at this device's console and run doctor "
        "again; if one is signed in, the script must print AGENT_USERNAME= and "
        "AGENT_USER_HOME= for them"
    ),
    "script_hash_mismatch": (
        "the script changed on its way (a proxy rewriting answers?) or on the authority: "
        f"compare its SHA-256 with {POLICY_SHOW}"
    ),
    "interpreter_missing": (
        "install the script's interpreter on this device, or give the policy a script for "
        "an interpreter it has (/bin/sh, /bin/bash)"
    ),
    "account_unusable": (
        "set `detection_user` in conf/agent.yaml to an unprivileged account that exists "
        "(the default is nobody)"
    ),
    "sandbox_unavailable": (
        "install bubblewrap (package bubblewrap) and allow unprivileged user namespaces, or "
        "turn the policy's require_strong_sandbox off (`holdfast-authority policy set "
        "--org ORG require_strong_sandbox=false`)"
    ),
    "timeout": (
        "the script ran longer than detection_timeout_seconds: make it faster, or raise the "
        "setting (`policy set --org ORG detection_timeout_seconds=N`)"
    ),
    "start_failed": (
        "the system's temporary folder is full or not writable: free space there and check "
        "its permissions (the script runs from a fresh folder in it)"
    ),
    "policy_invalid": (
        "the policy's detection script object is malformed: install the agent version that "
        "matches the authority's"
    ),
}
_SCRIPT_FIX = (
    "fix the detection script: run it by hand as the detection account, in the sandbox's "
    "conditions (no network, read-only disk), until it prints AGENT_USERNAME= and "
    "AGENT_USER_HOME= for the signed-in user; then give the policy the fixed script"
)

CLOCK_FIX = (
    "set the right time: turn network time on for the device (`timedatectl set-ntp true` "
    "on Linux; Date & Time settings on macOS), or on the authority if its clock is the wrong "
    "one; a clock this far off makes certificates look expired or not yet valid"
)
DISK_FIX = (
    "free space on that disk: the agent keeps its state, its files cache and its logs there, "
    "and stops backing up without room for them"
)


def arguments_fix(kind: str) -> str:
    """`kind` is missing, unreadable or invalid."""
    return _ARGUMENTS[kind]


def dns_fix(host: str) -> str:
    return (
        f"check the host name {host} in DEPLOYMENT_URL (or PROXY_URL), and this device's DNS "
        f"(/etc/resolv.conf, VPN): `getent hosts {host}` must print an address"
    )


def tcp_fix(port: int, *, timed_out: bool) -> str:
    if timed_out:
        return (
            f"a firewall drops the traffic or the host is down: allow TCP port {port} from "
            "this device to the authority (or its proxy)"
        )
    return (
        f"nothing accepts connections on port {port} there: check the port in DEPLOYMENT_URL, "
        "that the authority runs (`holdfast-authority serve`) and that no firewall rejects it"
    )


def tls_fix() -> str:
    return (
        "something answered that does not speak TLS 1.2 or later: check that DEPLOYMENT_URL "
        "names the authority's HTTPS port (4285 by default), and that no proxy blocks it"
    )


def pin_fix() -> str:
    return (
        "the server's certificate changed, or a proxy or security appliance intercepts TLS "
        "on this network: compare the sha1/sha256 seen with `holdfast-authority tls show` "
        f"on the authority (or the SSL_WHITELIST of {POLICY_SHOW}); if they match the "
        "authority's, redeploy with its current installer arguments; if not, exempt the "
        "authority's address from TLS inspection"
    )


def untrusted_fix() -> str:
    return (
        "without SSL_WHITELIST the system's certificate store must trust the authority: add "
        f"SSL_WHITELIST (use the installer arguments of {POLICY_SHOW}), or install the "
        "organization's CA in the system store; an intercepting proxy also causes this"
    )


def token_fix(code: str) -> str:
    """The fix for the code the authority (or the transport) gave the dry-run policy fetch."""
    if code in _TOKEN_FIXES:
        return _TOKEN_FIXES[code]
    if code == "tls_pin_mismatch":
        return pin_fix()
    if code == "tls_verify_failed":
        return untrusted_fix()
    if code in ("connect_failed", "timeout"):
        return _UNREACHED
    if code in ("overloaded", "database_busy", "internal_error", "http_error", "bad_answer"):
        return _BUSY
    return f"see the code {code} in docs/contract.md section 9.5, and the authority's log"


def detection_fix(code: str) -> str:
    return _DETECTION_FIXES.get(code, _SCRIPT_FIX)


__all__ = [
    "CLOCK_FIX",
    "DISK_FIX",
    "arguments_fix",
    "detection_fix",
    "dns_fix",
    "pin_fix",
    "tcp_fix",
    "tls_fix",
    "token_fix",
    "untrusted_fix",
]
