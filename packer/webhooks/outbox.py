"""The durable outbox: events are written in the same transaction as the change they describe.

``emit(tx, event_type, repository, payload)`` records the event and one pending delivery
per matching active subscription, inside the caller's ``Database.transaction()``: if the
change commits, so does the event; if it rolls back, no event exists. The delivery worker
picks pending deliveries up afterwards (at least once)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from proxy.meta.db import Transaction

from ..chains import glob_match
from ..package import canonical_json

__all__ = ["EVENT_TYPES", "SCHEMA", "emit", "event_body", "subscription_matches"]

# Event types subscribers can filter on ("*" subscribes to all).
EVENT_TYPES = frozenset({"generic.pushed", "business.assembled", "assembly.failed", "full.built"})
# A delivery is pending until it succeeds (delivered) or runs out of attempts (dead).
DELIVERY_STATUSES = ("pending", "delivered", "dead")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS subscriptions (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        events TEXT NOT NULL,
        repositories TEXT NOT NULL,
        secret TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        active INTEGER NOT NULL DEFAULT 1,
        created REAL NOT NULL,
        updated REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS webhook_events (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        repository TEXT NOT NULL,
        payload TEXT NOT NULL,
        created REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS webhook_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
        subscription_id TEXT NOT NULL REFERENCES subscriptions(id) ON DELETE CASCADE,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        created REAL NOT NULL,
        delivered REAL
    )""",
    "CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (status, next_attempt)",
    "CREATE INDEX IF NOT EXISTS webhook_deliveries_by_sub ON webhook_deliveries (subscription_id, id)",
    """CREATE TABLE IF NOT EXISTS webhook_attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id INTEGER NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        at REAL NOT NULL,
        duration_ms REAL NOT NULL,
        status INTEGER,
        error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS webhook_attempts_by_delivery ON webhook_attempts (delivery_id, attempt)",
]


def subscription_matches(events: list[str], repositories: list[str], event_type: str, repository: str) -> bool:
    if "*" not in events and event_type not in events:
        return False
    return any(glob_match(glob, repository) for glob in repositories)


async def emit(tx: Transaction, event_type: str, repository: str, payload: dict[str, Any]) -> str:
    """Record an event and its deliveries inside ``tx``; returns the event id."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    event_id = str(uuid.uuid4())
    now = time.time()
    await tx.execute(
        "INSERT INTO webhook_events (id, type, repository, payload, created) VALUES (?, ?, ?, ?, ?)",
        (event_id, event_type, repository, canonical_json(payload).decode(), now),
    )
    for sub in await tx.fetchall("SELECT id, events, repositories FROM subscriptions WHERE active = 1"):
        if subscription_matches(json.loads(sub["events"]), json.loads(sub["repositories"]), event_type, repository):
            await tx.execute(
                "INSERT INTO webhook_deliveries (event_id, subscription_id, status, next_attempt, created)"
                " VALUES (?, ?, 'pending', ?, ?)",
                (event_id, sub["id"], now, now),
            )
    return event_id


def event_body(event_id: str, event_type: str, repository: str, payload: str, created: float) -> bytes:
    """The delivered JSON, byte-identical on every attempt (so is its signature)."""
    return canonical_json({
        "id": event_id,
        "type": event_type,
        "repository": repository,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z",
        "data": json.loads(payload),
    })
