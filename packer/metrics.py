"""Assembly jobs, webhook deliveries and full builds by state, for ``/metrics``.

Counted from the metadata store when Prometheus scrapes, so the figures are right after
a restart and across every code path that changes a state, without counters to keep in
step. A state with no rows reads 0 rather than disappearing."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from proxy.meta import Database

from . import assembly
from .fullbuild.store import STATES as BUILD_STATES
from .webhooks import DELIVERY_STATUSES

__all__ = ["StateGauges"]


@dataclass(frozen=True)
class _Count:
    gauge: Gauge
    query: str
    states: tuple[str, ...]


class StateGauges:
    def __init__(self, db: Database, registry: CollectorRegistry) -> None:
        self.db = db

        def gauge(name: str, help_text: str, label: str) -> Gauge:
            return Gauge(name, help_text, [label], registry=registry)

        self._counts = [
            _Count(gauge("algomint_assembly_jobs", "Assembly jobs by status", "status"),
                   "SELECT status, COUNT(*) FROM assembly_jobs GROUP BY status", assembly.STATUSES),
            _Count(gauge("algomint_webhook_deliveries", "Webhook deliveries by status", "status"),
                   "SELECT status, COUNT(*) FROM webhook_deliveries GROUP BY status", DELIVERY_STATUSES),
            _Count(gauge("algomint_full_builds", "Full builds by state", "state"),
                   "SELECT state, COUNT(*) FROM full_builds GROUP BY state", BUILD_STATES),
        ]

    async def refresh(self) -> None:
        for count in self._counts:
            found = {row[0]: row[1] for row in await self.db.fetchall(count.query)}
            for state in (*count.states, *(s for s in found if s not in count.states)):
                count.gauge.labels(state).set(found.get(state, 0))
