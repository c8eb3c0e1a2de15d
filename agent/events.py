"""The agent's log events: a stable ID for every line support staff may look up.

Each line of `log/agent.log` carries an ID such as `HF2101`. The ID says what happened, so
a support guide, a log shipper's alert or a ticket can name it whatever the wording of the
sentence becomes. docs/operations.md lists every ID with its meaning and the usual fix; a
test keeps that table and this catalogue the same.

IDs by area: HF0xxx retries, HF1xxx the agent itself and its users, HF2xxx the authority
and the policy, HF3xxx user detection, HF4xxx registration, HF5xxx backups. In each area
x0xx is normal progress, x1xx a problem. A line logged without an ID of its own gets its
area's general ID (HF1000, HF2000, ...), chosen by the module that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EventInfo:
    meaning: str
    fix: str
    history: bool = False  # also written to log/history.log, the user-facing summary


# Retries
ATTEMPT_FAILED = "HF0101"
STILL_FAILING = "HF0102"
RECOVERED = "HF0103"
# The agent itself, its users
AGENT_STARTED = "HF1001"
AGENT_STOPPING = "HF1002"
PHASE_CHANGED = "HF1003"
STOPPED_BY_USER = "HF1010"
STARTED_BY_USER = "HF1011"
BACKUP_REQUESTED = "HF1012"
SIGN_IN_REQUESTED = "HF1013"
CONTROL_REFUSED = "HF1101"
ARGS_UNUSABLE = "HF1102"
LOCAL_ERROR = "HF1103"
DISK_FULL = "HF1104"
# The authority and the policy
POLICY_REQUESTED = "HF2001"
POLICY_FOUND = "HF2002"
UNREACHABLE = "HF2101"
PIN_MISMATCH = "HF2102"
TOKEN_REFUSED = "HF2103"  # noqa: S105  # an event ID, not a token
ORG_DEACTIVATED = "HF2104"
AUTHORITY_BUSY = "HF2105"
NO_ARGS = "HF2106"
# User detection
USER_DETECTED = "HF3001"
NO_USER = "HF3101"
DETECTION_FAILED = "HF3102"
NO_SCRIPT = "HF3103"
DETECTION_INTERRUPTED = "HF3104"
# Registration
REGISTERING = "HF4001"
REGISTERED = "HF4002"
SIGNED_IN = "HF4003"
NOT_IN_DIRECTORY = "HF4101"
DIRECTORY_DOWN = "HF4102"
SIGN_IN_NEEDED = "HF4103"
CREDENTIAL_REFUSED = "HF4104"
CLONED = "HF4105"
REGISTRATION_REFUSED = "HF4106"
# Backups
BACKUP_STARTED = "HF5001"
BACKUP_COMPLETED = "HF5002"
BACKUP_INTERRUPTED = "HF5003"
BACKUP_HELD = "HF5004"
BACKUPS_START = "HF5005"
BACKUP_FAILED = "HF5101"
FILE_SKIPPED = "HF5102"

CATALOGUE: dict[str, EventInfo] = {
    ATTEMPT_FAILED: EventInfo(
        "an attempt failed for a reason without an ID of its own; the next attempt's time "
        "is on the line",
        "read the reason; `holdfast doctor` checks the whole path to the authority",
    ),
    STILL_FAILING: EventInfo(
        "the same failure again; repeated failures are collapsed into this line (on the "
        "4th, 8th, 16th, ... attempt) instead of one line each",
        "as for the first failure of the run, quoted on the line",
    ),
    RECOVERED: EventInfo(
        "an attempt succeeded after failures; says how many and since when",
        "none",
        history=True,
    ),
    AGENT_STARTED: EventInfo(
        "the agent started (version, device, phase, state folder)", "none", history=True
    ),
    AGENT_STOPPING: EventInfo(
        "the agent is stopping (service stop, shutdown); its state is saved", "none", True
    ),
    PHASE_CHANGED: EventInfo(
        "the agent moved to another phase (section 'Phases' of this guide)", "none"
    ),
    STOPPED_BY_USER: EventInfo(
        "a user stopped the agent (tray or `holdfast stop`); nothing runs until started",
        "ask the user, or `holdfast start`; a policy can forbid user stops (allow_user_stop)",
        history=True,
    ),
    STARTED_BY_USER: EventInfo("a user started the agent again", "none", history=True),
    BACKUP_REQUESTED: EventInfo("a user asked for a backup now", "none"),
    SIGN_IN_REQUESTED: EventInfo("a user signed in (manual registration)", "none"),
    CONTROL_REFUSED: EventInfo(
        "a local command (stop, start, backup-now, sign-in) was refused; names who asked",
        "only the device's user and administrators may; the policy may forbid stops",
    ),
    ARGS_UNUSABLE: EventInfo(
        "the installer arguments in deploy.properties cannot be used; names the key",
        "copy the installer arguments again from the policy view and redeploy them",
    ),
    LOCAL_ERROR: EventInfo(
        "the agent could not use its own files (permissions, a damaged file)",
        "read the path on the line; reinstalling repairs the folders' owners",
    ),
    DISK_FULL: EventInfo(
        "the disk holding the agent's folders is full: no state or log can be written",
        "free space on that disk; the agent carries on by itself once there is room",
        history=True,
    ),
    POLICY_REQUESTED: EventInfo("the agent asks the authority for its deployment policy", "none"),
    POLICY_FOUND: EventInfo(
        "the authority returned the policy (organization, registration kind)", "none", True
    ),
    UNREACHABLE: EventInfo(
        "the authority cannot be reached (DNS, connection refused or timed out)",
        "check the URL in the installer arguments, DNS, firewalls and proxies between the "
        "device and the authority; `holdfast doctor` tests each step",
    ),
    PIN_MISMATCH: EventInfo(
        "the authority's certificate is not the one SSL_WHITELIST pins; no request was "
        "sent; the line gives the fingerprint seen",
        "if the authority's certificate changed, copy the current installer arguments "
        "(with the new pin); if not, something intercepts TLS on the way",
    ),
    TOKEN_REFUSED: EventInfo(
        "the authority refuses the deployment token (unknown, rotated, or its policy deleted)",
        "copy the current installer arguments from the policy view and redeploy "
        "deploy.properties; registered devices are not affected",
    ),
    ORG_DEACTIVATED: EventInfo(
        "the policy's organization is deactivated",
        "an administrator reactivates the organization, or deploys another policy",
    ),
    AUTHORITY_BUSY: EventInfo(
        "the authority is overloaded or its database busy; the agent waits at least as "
        "long as it asked (Retry-After)",
        "none on the device; if it lasts, look at the authority's log",
    ),
    NO_ARGS: EventInfo(
        "no installer arguments yet (no deploy.properties)",
        "deploy deploy.properties, or reinstall with the installer arguments",
    ),
    USER_DETECTED: EventInfo("the detection script found the user and home folder", "none", True),
    NO_USER: EventInfo(
        "the detection script ran but reported no user (nobody logged in yet?)",
        "normal right after installation on a shared or unattended machine; otherwise "
        "see log/detection.log for what the script printed",
    ),
    DETECTION_FAILED: EventInfo(
        "the detection script failed (exit code, timeout, sandbox); log/detection.log has "
        "its output",
        "fix the script in the policy; `holdfast doctor` runs it in the sandbox",
    ),
    NO_SCRIPT: EventInfo(
        "the policy has no detection script for this operating system",
        "an administrator deletes and creates the policy again with `--script OS=FILE` "
        "for this system (the installer arguments change with it)",
    ),
    DETECTION_INTERRUPTED: EventInfo(
        "user detection was interrupted because the agent is stopping", "none"
    ),
    REGISTERING: EventInfo("the agent registers the device for the detected user", "none"),
    REGISTERED: EventInfo(
        "the device is registered (user, organization): backups follow", "none", True
    ),
    SIGNED_IN: EventInfo("a manual sign-in registered the device", "none", True),
    NOT_IN_DIRECTORY: EventInfo(
        "the directory has no usable account for the detected user (absent, disabled, or "
        "several matches)",
        "add or enable the user in the directory, or fix the detection script's username "
        "(email or short name, as the organization expects); the agent retries hourly",
    ),
    DIRECTORY_DOWN: EventInfo(
        "the authority cannot use the organization's directory (LDAP down, bind refused)",
        "an administrator checks the directory and the organization's LDAP settings",
    ),
    SIGN_IN_NEEDED: EventInfo(
        "the policy needs the user to sign in (not silent)",
        "the user signs in from the tray or with `holdfast login`",
    ),
    CREDENTIAL_REFUSED: EventInfo(
        "the authority no longer accepts the device credential; the agent registers again",
        "none, unless it repeats: then the device was deleted on the authority",
    ),
    CLONED: EventInfo(
        "the device identity was copied from another machine; a new one was made",
        "none",
    ),
    REGISTRATION_REFUSED: EventInfo(
        "the authority refused the registration for another reason, given on the line",
        "read the reason; `holdfast-authority device attempts` shows the server's side",
    ),
    BACKUP_STARTED: EventInfo("a backup started", "none", True),
    BACKUP_COMPLETED: EventInfo(
        "a backup completed: snapshot, files, bytes, what was new", "none", True
    ),
    BACKUP_INTERRUPTED: EventInfo(
        "a backup stopped because the agent is stopping; the next one resumes it", "none"
    ),
    BACKUP_HELD: EventInfo(
        "a backup waits: the device runs on battery (policy pause_on_battery)", "none"
    ),
    BACKUPS_START: EventInfo("backups begin for this home folder, the first at once", "none"),
    BACKUP_FAILED: EventInfo(
        "a backup failed (authority unreachable, refused, or the home folder missing); it "
        "is retried on the backup schedule",
        "read the reason on the line",
        history=True,
    ),
    FILE_SKIPPED: EventInfo(
        "a file could not be backed up (permission, vanished); the snapshot is partial",
        "usually none; a file that is always refused needs its permissions fixed",
    ),
}

# Lines written without an ID get their area's, from the module that wrote them.
GENERAL: dict[str, EventInfo] = {
    "HF1000": EventInfo("another message of the agent itself", "none"),
    "HF2000": EventInfo("another message about the authority or the connection", "none"),
    "HF3000": EventInfo("another message of user detection or the sandbox", "none"),
    "HF4000": EventInfo("another message of registration or sign-in", "none"),
    "HF5000": EventInfo("another message of backups or restores", "none"),
}
_AREA_OF_MODULE = {
    "transport": "HF2000",
    "pinning": "HF2000",
    "policy": "HF2000",
    "detection": "HF3000",
    "detection_log": "HF3000",
    "sandbox": "HF3000",
    "sandbox_posix": "HF3000",
    "sandbox_windows": "HF3000",
    "registration": "HF4000",
    "login": "HF4000",
    "identity": "HF4000",
}

# A failed attempt's ID, from the error code the failure carries.
_CODE_EVENTS: dict[str, str] = {
    "connect_failed": UNREACHABLE,
    "timeout": UNREACHABLE,
    "tls_pin_mismatch": PIN_MISMATCH,
    "token_missing": TOKEN_REFUSED,
    "token_malformed": TOKEN_REFUSED,
    "token_unknown": TOKEN_REFUSED,
    "token_rotated": TOKEN_REFUSED,
    "policy_deleted": TOKEN_REFUSED,
    "org_deactivated": ORG_DEACTIVATED,
    "overloaded": AUTHORITY_BUSY,
    "database_busy": AUTHORITY_BUSY,
    "internal_error": AUTHORITY_BUSY,
    "unconfigured": NO_ARGS,
    "no_user_detected": NO_USER,
    "no_detection_script": NO_SCRIPT,
    "directory_user_not_found": NOT_IN_DIRECTORY,
    "directory_user_disabled": NOT_IN_DIRECTORY,
    "directory_user_ambiguous": NOT_IN_DIRECTORY,
    "directory_unavailable": DIRECTORY_DOWN,
    "directory_bind_failed": DIRECTORY_DOWN,
    "directory_search_failed": DIRECTORY_DOWN,
    "directory_misconfigured": DIRECTORY_DOWN,
    "sign_in_required": SIGN_IN_NEEDED,
    "username_not_email": REGISTRATION_REFUSED,
    "invalid_username": REGISTRATION_REFUSED,
    "device_in_other_org": REGISTRATION_REFUSED,
    "device_cloned": CLONED,
    "disk_full": DISK_FULL,
    "local_error": LOCAL_ERROR,
}
# Every failure of user detection is said so (agent/daemon.py): its codes (`timeout`,
# `invalid_username`, ...) overlap the transport's and the authority's.
DETECTION_FAILURE_PREFIX = "user detection failed: "


def for_failure(code: str, message: str = "") -> str:
    """The ID of a failed attempt with this error code and message."""
    if message.startswith(DETECTION_FAILURE_PREFIX):
        return DETECTION_FAILED
    return _CODE_EVENTS.get(code, ATTEMPT_FAILED)


def for_module(module: str, pathname: str) -> str:
    """The general ID of a line written without one, from the writing module's name and
    file (everything under agent/backup/ is about backups)."""
    if "backup" in Path(pathname).parent.parts[-1:]:
        return "HF5000"
    return _AREA_OF_MODULE.get(module, "HF1000")


def describe(event: str) -> EventInfo | None:
    return CATALOGUE.get(event) or GENERAL.get(event)


__all__ = [
    "CATALOGUE",
    "DETECTION_FAILURE_PREFIX",
    "GENERAL",
    "EventInfo",
    "describe",
    "for_failure",
    "for_module",
]
