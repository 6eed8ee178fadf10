"""The auth worker's Prometheus metrics, in a registry of its own (several workers may live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Seconds; a login has LOGIN_TIMEOUT (10 s by default) end to end.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter(
            "minidoor_worker_jobs", "Jobs finished, by outcome: token, an OAuth error, expired", ["outcome"], registry=r
        )
        self.job_seconds = Histogram(
            "minidoor_worker_job_duration_seconds",
            "Time from taking a job to acknowledging it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "minidoor_worker_rate_limited", "Logins refused with 429 by a rate limit", ["limit"], registry=r
        )
        self.in_flight = Gauge("minidoor_worker_jobs_in_flight", "Jobs this worker holds right now", registry=r)
        self.reclaimed = Counter(
            "minidoor_worker_reclaimed_jobs", "Jobs taken over from a worker that stopped touching them", registry=r
        )
        self.exchanges = Counter(
            "minidoor_worker_code_exchanges",
            "How each job's code was settled: exchanged, session_reused, shared, replayed, interrupted, released",
            ["path"],
            registry=r,
        )
        self.wechat_calls = Counter(
            "minidoor_wechat_calls",
            "jscode2session calls by outcome (ok, errcode, busy, http_5xx, timeout, ...)",
            ["outcome"],
            registry=r,
        )
        self.wechat_seconds = Histogram(
            "minidoor_wechat_call_duration_seconds",
            "Duration of one jscode2session call",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.wechat_circuit_open = Gauge(
            "minidoor_wechat_circuit_open", "1 while the WeChat circuit breaker fails calls fast", registry=r
        )
        self.token_refreshes = Counter(
            "minidoor_wechat_token_refreshes",
            "stable_token calls by mode (normal, force) and outcome (ok, errcode, unreachable, ...)",
            ["mode", "outcome"],
            registry=r,
        )
        self.token_waits = Counter(
            "minidoor_wechat_token_waits",
            "Times a job waited for another process's refresh of a WeChat access token",
            registry=r,
        )
        self.token_retries = Counter(
            "minidoor_wechat_token_retries",
            "API calls retried with a newer access token after WeChat rejected one, by errcode (40001, ...)",
            ["errcode"],
            registry=r,
        )
