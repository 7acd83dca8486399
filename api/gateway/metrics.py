"""Prometheus metrics of one gateway process, served at ``GET /metrics`` to administrators and to a scraper
holding the metrics token, or on a port of their own (``[abuse.metrics]``, docs/abuse.md): they show revenue.

Each app gets its own registry (tests build many apps in one process). Money counters are exposed
as floats because that is the Prometheus data model; they are for dashboards, never for billing:
the ledger is the record.

Every label takes values from a fixed set, whatever a client sends: the route is the matched route's
template (``/api/tools/{name}``; ``(unmatched)`` for any path no route serves), the method one of
``METHODS`` or ``OTHER``, the status a number. A flood of random paths and methods adds no series.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

from api.abuse.connections import ConnectionLimits

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "(unmatched)"
# Routes whose requests are long-lived streams: counted, but kept out of the latency histogram.
STREAM_ROUTES = frozenset({"/sse", "/mcp"})

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _PoolCollector(Collector):
    """The gateway's connection pools, one label value per pool (metering, payments, operator)."""

    def __init__(self) -> None:
        self._pools: dict[str, AsyncConnectionPool[Any]] = {}

    def add(self, name: str, pool: AsyncConnectionPool[Any]) -> None:
        self._pools[name] = pool

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(
            "tollgate_db_pool_connections", "Connections of a database pool", labels=["pool", "state"]
        )
        waiting = GaugeMetricFamily(
            "tollgate_db_pool_waiting", "Requests waiting for a pooled connection", labels=["pool"]
        )
        for name, pool in self._pools.items():
            stats = pool.get_stats()
            size.add_metric([name, "open"], stats.get("pool_size", 0))
            size.add_metric([name, "idle"], stats.get("pool_available", 0))
            size.add_metric([name, "max"], pool.max_size)
            waiting.add_metric([name], stats.get("requests_waiting", 0))
        yield size
        yield waiting


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


def route_label(scope: Scope) -> str:
    """The template of the route that served (or would serve) the request: the router's choice
    (``scope["route"]``), or, for a request answered before routing (a refused credential), the first of the
    app's routes that matches it; ``UNMATCHED`` when none does."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(app, "routes", ()):
            if isinstance(candidate, BaseRoute) and candidate.matches(scope)[0] is not Match.NONE:
                route = candidate
                break
        else:
            return UNMATCHED
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    return path + "/" if isinstance(route, Mount) else path


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._pools: _PoolCollector | None = None
        self.http_requests = Counter(
            "tollgate_http_requests", "HTTP requests served", ["method", "route", "status"], registry=self.registry
        )
        self.http_latency = Histogram(
            "tollgate_http_request_seconds",
            "HTTP request latency (SSE streams excluded)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tool_calls = Counter(
            "tollgate_tool_calls", "Tool calls by outcome", ["tool", "transport", "outcome"], registry=self.registry
        )
        self.tool_latency = Histogram(
            "tollgate_tool_call_seconds",
            "Tool call latency, metering included",
            ["tool"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.charges = Counter("tollgate_charges", "Calls charged to a user", registry=self.registry)
        self.charged_usd = Counter(
            "tollgate_charged_usd", "USD charged (approximate; see the ledger)", registry=self.registry
        )
        self.written_off_usd = Counter(
            "tollgate_written_off_usd",
            "USD of call prices written off, not charged (approximate; see billing.written_off_calls)",
            ["tool"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "tollgate_refusals", "Calls refused before running, by reason", ["reason"], registry=self.registry
        )
        self.billing_faults = Counter(
            "tollgate_billing_faults", "Completions that could not be written and were spooled", registry=self.registry
        )
        self.connection_refusals = Counter(
            "tollgate_connection_refusals",
            "Connections closed and sessions or streams refused by connection hygiene (api.abuse.connections)",
            ["reason"],
            registry=self.registry,
        )

    def count_refusal(self, reason: str) -> None:
        """``api.abuse.connections``' refusal hook (reasons are a fixed set of its own)."""
        self.connection_refusals.labels(reason).inc()

    def watch_connections(self, limits: ConnectionLimits) -> None:
        """Export the open MCP sessions and event streams of ``limits``."""
        sessions = Gauge("tollgate_mcp_sessions_open", "Open MCP sessions (/mcp and /sse)", registry=self.registry)
        sessions.set_function(lambda: limits.sessions.count)
        streams = Gauge(
            "tollgate_event_streams_open", "Open event streams (GET /sse, GET /mcp)", registry=self.registry
        )
        streams.set_function(lambda: limits.streams.count)

    def watch_pool(self, name: str, pool: AsyncConnectionPool[Any]) -> None:
        """Export ``pool``'s size and waiters under the label pool=``name``."""
        if self._pools is None:
            self._pools = _PoolCollector()
            self.registry.register(self._pools)
        self._pools.add(name, pool)

    def render(self) -> bytes:
        return generate_latest(self.registry)
