"""PromQL in alert rules and dashboards: each expr parses, and names only metrics the services export."""

from __future__ import annotations

from collections.abc import Iterable

import promql_parser
from prometheus_client import CollectorRegistry

from auth_worker.metrics import WorkerMetrics
from gateway.metrics import GatewayMetrics
from user_store.metrics import UserStoreMetrics

#: Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
}


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name the gateway, the worker and the user store export, with its label names."""
    series: dict[str, frozenset[str]] = {name: frozenset({"job", "instance", "component", "pod"}) for name in
                                         PROMETHEUS_SERIES}  # fmt: skip
    registries: Iterable[CollectorRegistry] = (
        GatewayMetrics().registry,
        WorkerMetrics().registry,
        UserStoreMetrics().registry,
    )
    for registry in registries:
        for collector in list(registry._collector_to_names):
            labels = frozenset(getattr(collector, "_labelnames", ()))
            for family in getattr(collector, "describe", list)():
                for suffix in _SUFFIXES.get(family.type, ("",)):
                    extra = {"le"} if suffix == "_bucket" else set()
                    series[family.name + suffix] = labels | extra | {"job", "instance", "component", "pod"}
    return series


def check_expr(expr: str, series: dict[str, frozenset[str]]) -> list[str]:
    """What is wrong with ``expr``: a parse error, or a metric (or a matcher's label) no service exports."""
    try:
        tree = promql_parser.parse(expr)
    except Exception as exc:  # the parser raises its own (untyped) errors
        return [f"does not parse: {exc}"]
    problems: list[str] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if name is None:
                problems.append("a selector without a metric name")
                return
            if name not in series:
                problems.append(f"unknown metric {name}")
                return
            for matcher in node.matchers.matchers:
                if matcher.name not in series[name] and matcher.name != "__name__":
                    problems.append(f"{name} has no label {matcher.name}")

    promql_parser.walk(tree, visit, None)
    return problems
