"""The WeChat circuit breaker, on a clock the test moves."""

from __future__ import annotations

from auth_worker.breaker import CircuitBreaker
from tests.conftest import Clock


class TestCircuitBreaker:
    def test_opens_after_consecutive_failures_only(self):
        """A success in between resets the count; the threshold of failures in a row opens it."""
        clock = Clock()
        breaker = CircuitBreaker(3, 5.0, clock=clock)
        breaker.failed()
        breaker.failed()
        breaker.succeeded()
        breaker.failed()
        breaker.failed()
        assert breaker.retry_in() == 0
        breaker.failed()
        assert breaker.is_open
        assert breaker.retry_in() == 5.0

    def test_half_open_lets_one_probe_through(self):
        """After the reset time one call may probe; others wait; the probe's result closes or reopens it."""
        clock = Clock()
        breaker = CircuitBreaker(1, 5.0, clock=clock)
        breaker.failed()
        clock.now += 5.0
        assert breaker.retry_in() == 0  # the probe
        assert breaker.retry_in() > 0  # everyone else while it runs
        breaker.failed()
        assert breaker.retry_in() == 5.0
        clock.now += 5.0
        assert breaker.retry_in() == 0
        breaker.succeeded()
        assert not breaker.is_open and breaker.retry_in() == 0

    def test_a_probe_that_never_reports_does_not_keep_it_shut(self):
        """If the probing call vanished (its job was cancelled), another probe goes after the reset time."""
        clock = Clock()
        breaker = CircuitBreaker(1, 5.0, clock=clock)
        breaker.failed()
        clock.now += 5.0
        assert breaker.retry_in() == 0
        clock.now += 5.1
        assert breaker.retry_in() == 0
