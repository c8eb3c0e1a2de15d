"""Policy settings: every key `policy set` accepts, its type, bounds and default.

The table is the single source for validation (CLI and API), for the defaults a new policy
gets, and for the documentation in docs/contract.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authority.errors import InvalidInput

SECURITY_MODES = ("standard", "archive_password", "custom")

DEFAULT_EXCLUDES = (
    # Caches and trash: large, rebuilt by their applications, never what a user restores.
    ".cache/",
    ".local/share/Trash/",
    ".Trash/",
    "Library/Caches/",
    "AppData/Local/Temp/",
    "AppData/Local/Microsoft/Windows/INetCache/",
    "$Recycle.Bin/",
    "*.tmp",
)

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Setting:
    key: str
    kind: str  # "int", "bool", "choice" or "patterns"
    default: Any
    doc: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()

    def parse(self, raw: str) -> Any:
        """Turn the text an administrator typed into the setting's value, or say why not."""
        text = raw.strip()
        if self.kind == "int":
            try:
                value = int(text)
            except ValueError:
                raise InvalidInput(f"{self.key}: {raw!r} is not a whole number") from None
            return self.check(value)
        if self.kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise InvalidInput(f"{self.key}: {raw!r} is not true or false")
        if self.kind == "choice":
            return self.check(text)
        patterns = [p.strip() for p in text.split(",") if p.strip()]
        return self.check(patterns)

    def check(self, value: Any) -> Any:
        """Validate an already typed value (from JSON or from `parse`)."""
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"{self.key}: {value!r} is not a whole number")
            if self.minimum is not None and value < self.minimum:
                raise InvalidInput(f"{self.key}: {value} is below the minimum {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise InvalidInput(f"{self.key}: {value} is above the maximum {self.maximum}")
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise InvalidInput(f"{self.key}: {value!r} is not true or false")
        elif self.kind == "choice":
            if value not in self.choices:
                raise InvalidInput(f"{self.key}: {value!r} is not one of {', '.join(self.choices)}")
        else:
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise InvalidInput(f"{self.key}: expected a list of patterns")
            for pattern in value:
                if not pattern or "\n" in pattern or "\0" in pattern:
                    raise InvalidInput(f"{self.key}: {pattern!r} is not a usable pattern")
        return value


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        Setting(
            "detection_timeout_seconds",
            "int",
            60,
            "seconds the user-detection script may run before it is killed",
            minimum=1,
            maximum=300,
        ),
        Setting(
            "require_strong_sandbox",
            "bool",
            False,
            "refuse to run the detection script without the OS's strong sandbox "
            "(bubblewrap, sandbox-exec, job objects) instead of falling back to rlimits",
        ),
        Setting(
            "allow_user_stop",
            "bool",
            True,
            "whether the device's user may stop the agent from the tray or `holdfast stop`",
        ),
        Setting(
            "exclude",
            "patterns",
            list(DEFAULT_EXCLUDES),
            "comma-separated patterns, relative to the home directory, left out of backups "
            "(a trailing / means a folder); an empty value excludes nothing",
        ),
        Setting(
            "backup_interval_seconds",
            "int",
            900,
            "seconds between incremental backups",
            minimum=60,
            maximum=7 * 86400,
        ),
        Setting(
            "policy_retry_seconds",
            "int",
            300,
            "seconds between policy fetch attempts while the policy is not found",
            minimum=10,
            maximum=86400,
        ),
        Setting(
            "registration_retry_seconds",
            "int",
            3600,
            "seconds between registration attempts after a failure",
            minimum=10,
            maximum=7 * 86400,
        ),
        Setting(
            "bandwidth_limit_kbps",
            "int",
            0,
            "upload limit in kilobits per second; 0 means unlimited",
            minimum=0,
            maximum=10_000_000,
        ),
        Setting(
            "pause_on_battery",
            "bool",
            False,
            "hold scheduled backups while the device runs on battery",
        ),
        Setting(
            "security",
            "choice",
            "standard",
            "how backup keys are protected: standard (escrowed by the authority), "
            "archive_password (the user's password wraps the key), custom (the "
            "organization supplies the key)",
            choices=SECURITY_MODES,
        ),
    )
}


def defaults() -> dict[str, Any]:
    """A new policy's settings."""
    return {
        key: (list(s.default) if s.kind == "patterns" else s.default) for key, s in SETTINGS.items()
    }


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` words from the command line, validated together: one bad word changes nothing."""
    if not assignments:
        raise InvalidInput("nothing to set: give one or more KEY=VALUE")
    out: dict[str, Any] = {}
    for word in assignments:
        key, sep, raw = word.partition("=")
        key = key.strip()
        if not sep:
            raise InvalidInput(f"{word!r} is not KEY=VALUE")
        setting = SETTINGS.get(key)
        if setting is None:
            known = ", ".join(sorted(SETTINGS))
            raise InvalidInput(f"unknown policy setting {key!r}; known settings: {known}")
        out[key] = setting.parse(raw)
    return out


def complete(stored: Mapping[str, Any]) -> dict[str, Any]:
    """Stored settings over the defaults, so a key added in a later release has its default."""
    merged = defaults()
    merged.update({k: v for k, v in stored.items() if k in SETTINGS})
    return merged


__all__ = [
    "DEFAULT_EXCLUDES",
    "SECURITY_MODES",
    "SETTINGS",
    "Setting",
    "complete",
    "defaults",
    "parse_assignments",
]
