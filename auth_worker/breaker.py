"""A circuit breaker for WeChat: after enough consecutive failures, fail fast for a while instead of queueing every
login behind calls that time out, then let a single probe call decide whether WeChat is back.

Each worker process keeps its own breaker: no shared state to lose, and each worker learns within a few calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Closed → (``failures`` in a row) → open for ``reset_after`` s → half-open: one probe → closed or open."""

    def __init__(self, failures: int, reset_after: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._reset_after = reset_after
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_started: float | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def retry_in(self) -> float:
        """0 when a call may go ahead now (and, half-open, claims the one probe); else seconds until it may."""
        if self._opened_at is None:
            return 0.0
        now = self._clock()
        wait = self._opened_at + self._reset_after - now
        if wait > 0:
            return wait
        # A probe that never reported (its job was cancelled) must not keep the breaker shut forever.
        if self._probe_started is None or now - self._probe_started > self._reset_after:
            self._probe_started = now
            return 0.0
        return self._reset_after

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probe_started = None

    def failed(self) -> None:
        self._failures += 1
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()
            self._probe_started = None
