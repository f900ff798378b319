"""Subscriptions: who wants which events, and the record of every delivery attempt.

A subscription's URL is checked by ``packer.outbound`` when it is created or changed:
syntax (normalised, no encoded separators or dot segments) by the request models, then
``[webhooks] allow`` and the ``[outbound]`` refusals, including the addresses its host
resolves to now, by the store (``OutboundRefused`` says why)."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from proxy.meta import Database

from ..chains import validate_globs
from ..outbound import Denylist, OutboundRefused, check_target, parse_rules, parse_target
from ..settings import WebhooksConfig
from .outbox import EVENT_TYPES

__all__ = ["SubscriptionPatch", "SubscriptionSpec", "SubscriptionStore", "validate_url"]

MAX_SECRET = 512


ALLOW = "[webhooks] allow"


def validate_url(value: str) -> str:
    """The syntax rules of outbound URLs; where it may go is checked by the store."""
    try:
        parse_target(value)
    except OutboundRefused as exc:
        raise ValueError(exc.reason) from None
    return value


def _events(value: list[str]) -> list[str]:
    unknown = [e for e in value if e != "*" and e not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {sorted(EVENT_TYPES)} or '*'")
    return value


class SubscriptionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    events: list[str] = Field(min_length=1, max_length=20)
    repositories: list[str] = Field(default_factory=lambda: ["**"], min_length=1, max_length=100)
    secret: str | None = Field(None, min_length=16, max_length=MAX_SECRET)
    description: str = Field("", max_length=500)
    active: bool = True

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return validate_url(value)

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: list[str]) -> list[str]:
        return _events(value)

    @field_validator("repositories")
    @classmethod
    def _check_globs(cls, value: list[str]) -> list[str]:
        return validate_globs(value)


class SubscriptionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, max_length=2048)
    events: list[str] | None = Field(None, min_length=1, max_length=20)
    repositories: list[str] | None = Field(None, min_length=1, max_length=100)
    secret: str | None = Field(None, min_length=16, max_length=MAX_SECRET)
    description: str | None = Field(None, max_length=500)
    active: bool | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else validate_url(value)

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _events(value)

    @field_validator("repositories")
    @classmethod
    def _check_globs(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else validate_globs(value)

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Omit a field to keep it; an explicit null would otherwise reach the store.
        if value is None:
            raise ValueError("must not be null (omit the field to keep its value)")
        return value


def _public(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "url": row["url"],
        "events": json.loads(row["events"]),
        "repositories": json.loads(row["repositories"]),
        "description": row["description"],
        "active": bool(row["active"]),
        "created": row["created"],
        "updated": row["updated"],
    }


class SubscriptionStore:
    def __init__(self, db: Database, settings: WebhooksConfig, deny: Denylist) -> None:
        self.db = db
        self.rules = parse_rules(settings.allow)
        self.deny = deny

    async def check_url(self, url: str) -> None:
        """``OutboundRefused`` unless deliveries may go to ``url`` (its host resolved now)."""
        await check_target(parse_target(url), self.rules, self.deny, ALLOW)

    async def create(self, spec: SubscriptionSpec) -> tuple[dict[str, Any], str]:
        """Store a subscription; returns it and its secret (generated when not given).
        ``OutboundRefused`` when its URL may not be called."""
        await self.check_url(spec.url)
        secret = spec.secret or secrets.token_hex(32)
        sub_id = str(uuid.uuid4())
        now = time.time()
        await self.db.execute(
            "INSERT INTO subscriptions (id, url, events, repositories, secret, description, active, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sub_id, spec.url, json.dumps(spec.events), json.dumps(spec.repositories), secret, spec.description,
             int(spec.active), now, now),
        )
        return await self.get(sub_id), secret  # type: ignore[return-value]

    async def get(self, sub_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchone("SELECT * FROM subscriptions WHERE id = ?", (sub_id,))
        return _public(row) if row else None

    async def list(self, limit: int, after: str | None) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT * FROM subscriptions WHERE id > ? ORDER BY id LIMIT ?", (after or "", limit)
        )
        return [_public(r) for r in rows]

    async def update(self, sub_id: str, patch: SubscriptionPatch) -> dict[str, Any] | None:
        # null means "unchanged": every column is required.
        changes = {k: v for k, v in patch.model_dump(exclude_unset=True).items() if v is not None}
        if not changes:
            return await self.get(sub_id)
        if "url" in changes:
            await self.check_url(changes["url"])
        columns, values = [], []
        for key, value in changes.items():
            columns.append(f"{key} = ?")
            values.append(json.dumps(value) if key in ("events", "repositories") else
                          int(value) if key == "active" else value)
        columns.append("updated = ?")
        values.append(time.time())
        # Column names come from the model's fields, never from the request.
        count = await self.db.execute(f"UPDATE subscriptions SET {', '.join(columns)} WHERE id = ?", (*values, sub_id))
        return await self.get(sub_id) if count else None

    async def delete(self, sub_id: str) -> bool:
        return await self.db.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,)) > 0

    async def deliveries(self, sub_id: str, limit: int, before: int | None, status: str | None = None) -> list[dict[str, Any]]:
        """Newest first, each with its event and every attempt."""
        sql = ("SELECT d.*, e.type, e.repository, e.created AS event_created FROM webhook_deliveries d"
               " JOIN webhook_events e ON e.id = d.event_id WHERE d.subscription_id = ?")
        params: list[Any] = [sub_id]
        if before is not None:
            sql += " AND d.id < ?"
            params.append(before)
        if status:
            sql += " AND d.status = ?"
            params.append(status)
        rows = await self.db.fetchall(sql + " ORDER BY d.id DESC LIMIT ?", (*params, limit))
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        attempts: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        marks = ",".join("?" * len(ids))
        for a in await self.db.fetchall(
            f"SELECT * FROM webhook_attempts WHERE delivery_id IN ({marks}) ORDER BY delivery_id, attempt", ids
        ):
            attempts[a["delivery_id"]].append(
                {"attempt": a["attempt"], "at": a["at"], "duration_ms": a["duration_ms"], "status": a["status"],
                 "error": a["error"]}
            )
        return [
            {
                "id": r["id"],
                "event_id": r["event_id"],
                "event_type": r["type"],
                "repository": r["repository"],
                "status": r["status"],
                "attempts": r["attempts"],
                "next_attempt": r["next_attempt"] if r["status"] == "pending" else None,
                "last_status": r["last_status"],
                "last_error": r["last_error"],
                "created": r["created"],
                "delivered": r["delivered"],
                "history": attempts[r["id"]],
            }
            for r in rows
        ]

    async def redeliver(self, sub_id: str, delivery_id: int) -> bool:
        """Put a delivery (e.g. dead-lettered) back in the queue with a fresh attempt budget."""
        count = await self.db.execute(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt = ? "
            "WHERE id = ? AND subscription_id = ?",
            (time.time(), delivery_id, sub_id),
        )
        return count > 0
