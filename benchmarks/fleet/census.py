"""What the authority holds after a run, checked against the fleet that was simulated.

The authority's own lists (`device list`, `user list`) are the reference: a device counts
as registered when the authority lists its GUID as registered to the device's own user,
whatever the device believed. A duplicate is a record more than one per device or user:
the same GUID twice, a user twice, a user with a second device, or a registered device
that no simulated device accounts for (one of them under a second identity).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.fleet.device import SimulatedDevice


@dataclass(frozen=True)
class Census:
    devices: int  # simulated
    registered: int  # listed as registered, to the device's own user
    committed: int  # first snapshot committed (the authority's answer)
    complete: int  # both: registered to its user, first snapshot committed
    wrong_user: int  # registered, to another user than the device's
    duplicates: int

    @property
    def incomplete(self) -> int:
        """Devices that did not end registered with their first snapshot committed."""
        return self.devices - self.complete


def take_census(
    fleet: Sequence[SimulatedDevice],
    listed: Sequence[dict[str, Any]],
    users: Sequence[dict[str, Any]],
) -> Census:
    expected = {device.guid: device.username for device in fleet}
    rows = [row for row in listed if row.get("registered")]
    by_guid = Counter(str(row["guid"]) for row in rows)
    owner = {str(row["guid"]): row.get("username") for row in rows}
    registered = {g for g, name in owner.items() if expected.get(g) == name}
    wrong_user = sum(1 for g, name in owner.items() if g in expected and expected[g] != name)
    strangers = sum(1 for g in by_guid if g not in expected)
    names = Counter(str(user["username"]) for user in users)
    duplicates = (
        sum(n - 1 for n in by_guid.values())
        + strangers
        + sum(n - 1 for n in names.values())
        + sum(max(0, len(user.get("devices") or []) - 1) for user in users)
    )
    committed = {device.guid for device in fleet if device.record.snapshot_id}
    return Census(
        devices=len(fleet),
        registered=len(registered),
        committed=len(committed),
        complete=len(registered & committed),
        wrong_user=wrong_user,
        duplicates=duplicates,
    )


__all__ = ["Census", "take_census"]
