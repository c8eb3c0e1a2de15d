"""The deployment policy as the agent receives it (docs/contract.md, "Policy document")."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import PermanentError
from agent.pinning import normalise_fingerprint

POLICY_VERSION = 1


def this_os() -> str:
    """The OS name the authority's policies use: linux, macos or windows."""
    if sys.platform == "darwin":
        return "macos"
    if sys.platform == "win32":
        return "windows"
    return "linux"


@dataclass(frozen=True)
class Policy:
    org: str
    auth: str
    registration: str  # "silent" or "manual"
    detection: Mapping[str, Any] | None
    settings: Mapping[str, Any] = field(default_factory=dict)
    pins: tuple[str, ...] = ()  # every fingerprint the authority asks agents to trust

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Policy:
        try:
            if doc.get("version") != POLICY_VERSION:
                raise ValueError(f"policy version {doc.get('version')!r} is not {POLICY_VERSION}")
            org = doc["org"]
            registration = str(doc["registration"])
            if registration not in ("silent", "manual"):
                raise ValueError(f"registration {registration!r}")
            detection = doc.get("detection")
            if detection is not None and not isinstance(detection, Mapping):
                raise ValueError("detection is not an object")
            settings = doc.get("settings") or {}
            if not isinstance(settings, Mapping):
                raise ValueError("settings is not an object")
            pins: list[str] = []
            for entry in doc.get("tls_pins") or []:
                for key in ("sha1", "sha256"):
                    if entry.get(key):
                        pins.append(normalise_fingerprint(str(entry[key])))
            return cls(
                org=str(org["name"]),
                auth=str(org["auth"]),
                registration=registration,
                detection=detection,
                settings=dict(settings),
                pins=tuple(pins),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PermanentError(
                "policy_invalid", f"the authority sent a policy this agent cannot read ({exc})"
            ) from None


__all__ = ["POLICY_VERSION", "Policy", "this_os"]
