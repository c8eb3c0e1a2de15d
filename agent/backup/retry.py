"""A few quick retries around one request to the authority.

Only transient failures are retried, at most three attempts with exponential backoff and
jitter; the sleep and the randomness are injected so tests never wait. A server that asks
for a long pause (Retry-After beyond `max_wait`) is not argued with here: the run fails and
the lifecycle's schedule, which owns long waits, tries again later.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from agent import logs
from agent.errors import TransientError

log = logging.getLogger(logs.LOGGER)

T = TypeVar("T")


class Retrier:
    """Runs an operation, retrying TransientError `attempts - 1` times (thread-safe)."""

    def __init__(
        self,
        sleep: Callable[[float], None] = time.sleep,
        *,
        attempts: int = 3,
        initial: float = 1.0,
        max_wait: float = 10.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.sleep = sleep
        self.attempts = attempts
        self.initial = initial
        self.max_wait = max_wait
        self.rand = rand

    def _retryable(self, exc: BaseException) -> bool:
        if not isinstance(exc, TransientError):
            return False
        return exc.retry_after is None or exc.retry_after <= self.max_wait

    def _wait(self, state: RetryCallState) -> float:
        # "Equal jitter": half the exponential step fixed, half random, so a fleet that
        # failed together does not come back together.
        step = min(self.max_wait, self.initial * 2 ** (state.attempt_number - 1))
        wait: float = step / 2 + step / 2 * self.rand()
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return wait

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "request to the authority failed (%s); attempt %d of %d in %.1fs",
            exc,
            state.attempt_number + 1,
            self.attempts,
            wait,
        )

    def __call__(self, operation: Callable[[], T]) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception(self._retryable),
            sleep=self.sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        result = retrying(operation)
        failures = int(retrying.statistics.get("attempt_number", 1)) - 1
        if failures:
            log.info("request to the authority recovered after %d failures", failures)
        return result


__all__ = ["Retrier"]
