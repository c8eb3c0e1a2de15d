"""The policy's upload bandwidth limit: a token bucket every upload worker of a run shares.

A pack pays for its bytes before it is sent. The bucket may go into debt: an 8 MiB pack
under a limit of a few KB/s is still sent whole, its sender waiting first for what the
bucket lacks, and the next sender waits for that debt too. So the limit holds as an
average over the run however many workers there are, while each pack itself still leaves
at the link's speed (the transport takes a pack's parts as a list, not as a stream that
could be paced).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from agent.errors import BackupCancelled

Clock = Callable[[], float]
Sleep = Callable[[float], None]

BURST_SECONDS = 1.0  # an idle bucket lets this much of the rate through at once


class UploadLimit:
    """At most `bytes_per_second` on average, across all the threads that `take`."""

    def __init__(
        self,
        bytes_per_second: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if bytes_per_second <= 0:
            raise ValueError("a bandwidth limit must be positive; no limit is no UploadLimit")
        self.rate = float(bytes_per_second)
        self.capacity = self.rate * BURST_SECONDS
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._stamp = clock()

    @classmethod
    def from_policy(
        cls, kbps: int, *, clock: Clock = time.monotonic, sleep: Sleep = time.sleep
    ) -> UploadLimit | None:
        """The limit for the policy's `bandwidth_limit_kbps` (kilobits); None when 0."""
        if kbps <= 0:
            return None
        return cls(kbps * 1000 / 8, clock=clock, sleep=sleep)

    def take(self, amount: int) -> None:
        """Wait until `amount` bytes may go out (returns at once while the bucket holds them)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        # Outside the lock: the others reserve their turn behind this one meanwhile.
        if wait > 0:
            self._sleep(wait)


def interruptible_sleep(cancel: threading.Event | None) -> Sleep:
    """A sleep a stop cuts short: under a low limit one pack can wait for hours, and the
    daemon's stop must not wait with it."""
    if cancel is None:
        return time.sleep

    def sleep(seconds: float) -> None:
        if cancel.wait(seconds):
            raise BackupCancelled()

    return sleep


__all__ = ["UploadLimit", "interruptible_sleep"]
