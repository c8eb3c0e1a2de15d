"""`conf/agent.yaml`: local settings that override the policy's (CONTRACT.md section 4).

A key set here overrides the value the policy carries; a key not set here takes the
policy's value, else the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.errors import UsageError
from agent.lifecycle import Timings

LOG_LEVELS = ("debug", "info", "warning", "error")

# key: (type, minimum, maximum, default)
_NUMBERS: dict[str, tuple[type, float, float, float]] = {
    "policy_retry_seconds": (float, 1, 7 * 86400, 300),
    "registration_retry_seconds": (int, 1, 7 * 86400, 3600),
    "backup_interval_seconds": (int, 1, 7 * 86400, 900),
    "retry_jitter": (float, 0.0, 0.5, 0.1),
    "request_timeout_seconds": (float, 1, 600, 30),
    "detection_timeout_seconds": (int, 1, 300, 60),
    "log_max_mb": (int, 1, 1000, 10),
    "log_files": (int, 1, 50, 5),
}
# agent.yaml alone may go below a policy's minimum: benchmarks/soak.py drives thousands of
# real policy retries at 0.1 s. A policy's value (the authority's: 10 s or more) stays >= 1 s.
_LOCAL_MINIMUM = {"policy_retry_seconds": 0.1}
_STRINGS = ("log_level", "machine_id_file", "log_format", "detection_user")
DEFAULT_DETECTION_USER = "nobody"
KNOWN = tuple(_NUMBERS) + _STRINGS


@dataclass(frozen=True)
class AgentConfig:
    """What agent.yaml sets; `values` holds only the keys present in the file."""

    values: dict[str, Any] = field(default_factory=dict)

    @property
    def log_level(self) -> str:
        return str(self.values.get("log_level", "info"))

    @property
    def log_format(self) -> str:
        """`text` (the default) or `json`: one JSON object per line, for log shippers."""
        return str(self.values.get("log_format", "text"))

    @property
    def machine_id_file(self) -> str | None:
        value = self.values.get("machine_id_file")
        return str(value) if value else None

    @property
    def detection_user(self) -> str:
        """The unprivileged account detection scripts run as when the agent is root."""
        return str(self.values.get("detection_user", DEFAULT_DETECTION_USER))

    @property
    def request_timeout(self) -> float:
        return float(self.values.get("request_timeout_seconds", 30))

    def setting(self, key: str, policy: Mapping[str, Any] | None) -> float:
        """agent.yaml, else the policy, else the default."""
        if key in self.values:
            return float(self.values[key])
        _kind, low, high, default = _NUMBERS[key]
        if policy is not None and key in policy:
            try:
                value = float(policy[key])
            except (TypeError, ValueError, OverflowError):  # JSON integers have no size limit
                return default
            return value if low <= value <= high else default
        return default

    def timings(self, policy: Mapping[str, Any] | None) -> Timings:
        return Timings(
            policy_retry=self.setting("policy_retry_seconds", policy),
            registration_retry=self.setting("registration_retry_seconds", policy),
            backup_interval=self.setting("backup_interval_seconds", policy),
            jitter=self.setting("retry_jitter", None),
        )


def _check(key: str, value: Any, path: Path) -> Any:
    if key in _NUMBERS:
        kind, low, high, _default = _NUMBERS[key]
        low = _LOCAL_MINIMUM.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"{path}: {key} must be a number, not {value!r}")
        if kind is int and not float(value).is_integer():
            raise UsageError(f"{path}: {key} must be a whole number of seconds, not {value!r}")
        if not low <= value <= high:
            raise UsageError(f"{path}: {key} must be between {low:g} and {high:g}, not {value!r}")
        return kind(value)
    if key == "log_level" and str(value).lower() not in LOG_LEVELS:
        raise UsageError(f"{path}: log_level must be one of {', '.join(LOG_LEVELS)}")
    if key == "log_format" and value not in ("text", "json"):
        raise UsageError(f"{path}: log_format must be text or json")
    if key == "detection_user" and not (
        isinstance(value, str) and value.strip() == value and value and ":" not in value
    ):
        raise UsageError(f"{path}: detection_user must be the name of an account, not {value!r}")
    return str(value).lower() if key == "log_level" else str(value)


def load(path: Path) -> AgentConfig:
    """Read agent.yaml; a missing file means every default. Unknown keys are refused by name."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return AgentConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({exc})") from None
    if raw is None:
        return AgentConfig()
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected KEY: VALUE lines")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in KNOWN:
            raise UsageError(f"{path}: unknown key {key!r}; known keys: {', '.join(KNOWN)}")
        values[str(key)] = _check(str(key), value, path)
    return AgentConfig(values)


__all__ = ["KNOWN", "AgentConfig", "load"]
