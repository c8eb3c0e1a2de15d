"""How this device reaches its authority: the installer's arguments, the pins, the credential.

Shared by the daemon and by the commands that talk to the authority themselves
(`holdfast snapshots`, `holdfast restore`), so both trust exactly the same certificates.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from agent.deploy_args import DeployArgs, read_properties_file
from agent.errors import Refused, UsageError
from agent.paths import AgentPaths
from agent.registration import load_credential
from agent.state import load_state
from agent.transport import AuthorityClient


def authority_client(
    args: DeployArgs, delivered_pins: Iterable[str], timeout: float = 30.0
) -> AuthorityClient:
    """A client for `args`; pins the authority delivered join the installer's."""
    pins = list(args.ssl_whitelist)
    if pins:
        # Fingerprints the authority delivered (a staged next certificate) join the
        # installer's pins, so a certificate change never strands the fleet.
        pins += [p for p in delivered_pins if p not in pins]
    return AuthorityClient(
        args.deployment_url, pins=pins, proxy=args.connection_proxy, timeout=timeout
    )


def registered_access(paths: AgentPaths) -> tuple[AuthorityClient, str]:
    """A client and the device credential, for a command run by an administrator."""
    refusal = Refused(
        "only an administrator can read this device's settings and credential: run with "
        "sudo (or as Administrator)"
    )
    try:
        present = paths.deploy_properties.exists()
    except PermissionError:  # its folder is closed to this user (conf/ is the service's, 0700)
        raise refusal from None
    if present and not os.access(paths.deploy_properties, os.R_OK):
        raise refusal
    try:
        args = read_properties_file(paths.deploy_properties)
        credential = load_credential(paths.credential)
    except PermissionError:
        raise Refused(
            "only an administrator can read this device's credential: run with sudo "
            "(or as Administrator)"
        ) from None
    if credential is None:
        raise UsageError("this device is not registered yet; see `holdfast status`")
    state = load_state(paths.state_file)
    return authority_client(args, state.facts.get("pins", [])), credential


__all__ = ["authority_client", "registered_access"]
