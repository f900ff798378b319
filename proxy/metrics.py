"""Prometheus metrics, one registry per app so tests and replicas don't share state."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Refreshed before each scrape: figures read from a store rather than counted.
        self._refreshers: list[Callable[[], Awaitable[None]]] = []
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.requests = Counter(
            "algomint_http_requests", "HTTP requests by route and status", ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "algomint_http_request_duration_seconds", "Time to the end of the response", ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        # Constant 1, labelled with the replica id: joins any series to the replica serving it.
        self.replica_info = Gauge("algomint_replica_info", "This replica's id", ["replica"], registry=self.registry)
        self.bytes_in = Counter("algomint_http_received_bytes", "Request body bytes received", registry=self.registry)
        self.bytes_out = Counter("algomint_http_sent_bytes", "Blob and archive bytes sent", registry=self.registry)
        self.in_flight_streams = Gauge(
            "algomint_streams_in_flight", "Blob and archive streams being served", registry=self.registry
        )
        self.in_flight_requests = Gauge(
            "algomint_http_requests_in_flight", "Requests being handled", registry=self.registry
        )
        self.backend_errors = Counter(
            "algomint_backend_errors", "Backend failures seen by requests", ["code"], registry=self.registry
        )
        self.backend_retries = Counter(
            "algomint_backend_retries", "Safe reads (GET/HEAD) sent to the backend registry again, by method and "
            "what the first attempt met (5xx, reset)", ["method", "reason"], registry=self.registry,
        )

        self.gc_runs = Counter(
            "algomint_gc_runs", "Garbage collection runs by outcome", ["status", "dry_run"], registry=self.registry
        )
        self.gc_removed = Counter(
            "algomint_gc_removed", "Items garbage collection removed", ["kind"], registry=self.registry
        )
        self.gc_reclaimed_bytes = Counter(
            "algomint_gc_reclaimed_bytes", "Content bytes garbage collection deleted", registry=self.registry
        )
        self.gc_last_run = Gauge(
            "algomint_gc_last_run_timestamp_seconds", "When the last garbage collection run ended",
            ["status"], registry=self.registry,
        )
        self.gc_duration = Histogram(
            "algomint_gc_duration_seconds", "Garbage collection run time",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600), registry=self.registry,
        )

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request; ``labels()`` costs more than the count, so the
        labelled children are kept (as many as the registry keeps anyway)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.duration.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def on_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        self._refreshers.append(refresh)

    async def scrape(self) -> bytes:
        for refresh in self._refreshers:
            try:
                await refresh()
            except Exception:  # noqa: BLE001 - stale figures beat a failed scrape
                log.warning("metrics refresh failed", exc_info=True)
        return generate_latest(self.registry)
