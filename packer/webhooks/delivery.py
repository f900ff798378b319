"""Delivering outbox events to subscribers: signed, retried with backoff, dead-lettered.

Each delivery is a POST of the event's JSON body with ``X-Algomint-Signature:
sha256=<hex HMAC-SHA256 of the body keyed by the subscription secret>``. A 2xx answer
marks it delivered; anything else (another status, a connection error, a timeout) is an
attempt recorded with its reason, retried after an exponentially growing, jittered
delay, and dead-lettered after ``max_attempts``. State lives in the metadata store, so a
restart resumes where it stopped. Replicas share the outbox: each attempt is leased by
the replica sending it (``proxy.cluster.leases``, kind ``webhook``), so two replicas
never send the same delivery at once, and one cut short by a crash is sent again by any
replica once its lease expires (at least once: receivers de-duplicate by the event id).

Before each attempt the URL is checked again against ``[webhooks] allow`` and the
``[outbound]`` refusals (the config may have changed since the subscription was made), and
the session's resolver refuses a host whose addresses are refused at connection time (DNS
rebinding); a refused attempt is recorded with its reason and retried like any failure.
Redirects are not followed and only the first bytes of an answer are read."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from typing import Any

import aiohttp

from proxy.cluster.leases import LeaseLost, Leases
from proxy.meta import Database, MetadataError

from ..outbound import Denylist, OutboundRefused, guarded_session, parse_rules, parse_target, refusal_of, refused_cause
from ..settings import WebhooksConfig
from .outbox import event_body
from .subscriptions import ALLOW

__all__ = ["SIGNATURE_HEADER", "WebhookDelivery", "backoff_delay", "sign"]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Algomint-Signature"
_RESPONSE_PEEK = 4096
LEASE = "webhook"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before retry ``attempt`` (1-based): half fixed, half random, doubling each time."""
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class WebhookDelivery:
    """The background worker: polls due deliveries, sends them with bounded concurrency."""

    def __init__(self, db: Database, settings: WebhooksConfig, deny: Denylist, *, leases: Leases) -> None:
        self.db = db
        self.leases = leases
        self.settings = settings
        self.rules = parse_rules(settings.allow)
        self.deny = deny
        self._wake = asyncio.Event()
        self._in_flight: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._http = guarded_session(
            self.deny,
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            headers={"User-Agent": "algomint-webhooks"},
        )
        self._task = asyncio.create_task(self._run(), name="webhook-delivery")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    def notify(self) -> None:
        """Something was emitted: look now instead of at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        limit = asyncio.Semaphore(self.settings.concurrency)
        while True:
            try:
                await self._pass(limit)
            except Exception:  # noqa: BLE001 - the worker must outlive a bad pass
                log.exception("webhook delivery pass failed")
                await asyncio.sleep(self.settings.poll_interval)

    async def _pass(self, limit: asyncio.Semaphore) -> None:
        due = await self._due(self.settings.concurrency * 4)
        sent = 0
        for row in due:
            await limit.acquire()
            # Claimed only once a slot is free: a claimed delivery is sent (and its lease
            # renewed) at once, never left to expire while waiting here.
            try:
                claimed = await self._claim(row)
            except BaseException:
                limit.release()
                raise
            if not claimed:
                limit.release()
                continue
            sent += 1
            self._in_flight.add(row["id"])
            task = asyncio.create_task(self._deliver(row))
            self._tasks.add(task)
            task.add_done_callback(lambda t: (self._tasks.discard(t), limit.release()))
        if sent:
            return
        self._wake.clear()
        pause = await self._sleep_time()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), pause)

    async def _sleep_time(self) -> float:
        row = await self.db.fetchone(
            "SELECT MIN(d.next_attempt) AS next FROM webhook_deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
            " WHERE d.status = 'pending' AND s.active = 1 AND NOT " + self.leases.live(LEASE, "CAST(d.id AS TEXT)"),
            (self.leases.now(),),
        )
        poll = self.settings.poll_interval
        if row is None or row["next"] is None:
            return poll
        return max(0.01, min(poll, row["next"] - time.time()))

    async def _due(self, limit: int) -> list[Any]:
        rows = await self.db.fetchall(
            "SELECT d.id, d.attempts, d.event_id, s.url, s.secret, e.type, e.repository, e.payload, e.created"
            " FROM webhook_deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
            " JOIN webhook_events e ON e.id = d.event_id"
            " WHERE d.status = 'pending' AND s.active = 1 AND d.next_attempt <= ? AND NOT "
            + self.leases.live(LEASE, "CAST(d.id AS TEXT)") + " ORDER BY d.next_attempt LIMIT ?",
            (time.time(), self.leases.now(), limit + len(self._in_flight)),
        )
        return [r for r in rows if r["id"] not in self._in_flight][:limit]

    async def _claim(self, row: Any) -> bool:
        """Lease a due delivery to this replica; False when another replica holds it."""
        async with self.db.transaction() as tx:
            return await self.leases.claim(tx, LEASE, str(row["id"])) is not False

    async def _deliver(self, row: Any) -> None:
        try:
            body = event_body(row["event_id"], row["type"], row["repository"], row["payload"], row["created"])
            status, error, elapsed = await self.leases.run(
                LEASE, str(row["id"]), self._post(row["url"], body, row["secret"], row["type"], row["event_id"]))
            # Shielded: a write cancelled half-way would leave the connection in a transaction.
            await asyncio.shield(self._record(row["id"], row["attempts"] + 1, status, error, elapsed))
        except LeaseLost as exc:
            log.warning("webhook attempt not recorded: %s", exc, extra={"delivery": row["id"]})
        except MetadataError:
            log.exception("webhook delivery state not recorded", extra={"delivery": row["id"]})
        finally:
            self._in_flight.discard(row["id"])

    async def _post(self, url: str, body: bytes, secret: str, event_type: str, event_id: str) -> tuple[int | None, str | None, float]:
        assert self._http is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, body),
            "X-Algomint-Event": event_type,
            "X-Algomint-Event-Id": event_id,
        }
        started = time.perf_counter()
        try:
            target = parse_target(url)
            reason = refusal_of(target, self.rules, self.deny, ALLOW)
        except OutboundRefused as exc:
            reason = exc.reason
        if reason is not None:
            return None, f"refused: {reason}"[:500], 0.0
        try:
            async with self._http.post(target.url, data=body, headers=headers, allow_redirects=False) as resp:
                peek = await resp.content.read(_RESPONSE_PEEK)
                elapsed = time.perf_counter() - started
                if 200 <= resp.status < 300:
                    return resp.status, None, elapsed
                return resp.status, f"HTTP {resp.status}: {peek[:200].decode(errors='replace')}", elapsed
        except asyncio.TimeoutError:
            return None, f"timed out after {self.settings.timeout}s", time.perf_counter() - started
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            refused = refused_cause(exc) or (exc if isinstance(exc, OutboundRefused) else None)
            if refused is not None:
                return None, f"refused: {refused.reason}"[:500], time.perf_counter() - started
            return None, f"{type(exc).__name__}: {exc}"[:500], time.perf_counter() - started

    async def _record(self, delivery_id: int, attempt: int, status: int | None, error: str | None, elapsed: float) -> None:
        now = time.time()
        async with self.db.transaction() as tx:
            if not await self.leases.release(tx, LEASE, str(delivery_id)):
                raise LeaseLost(f"webhook delivery {delivery_id}: lease taken over by another replica")
            await tx.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, at, duration_ms, status, error) VALUES (?, ?, ?, ?, ?, ?)",
                (delivery_id, attempt, now, round(elapsed * 1000, 2), status, error),
            )
            if error is None:
                await tx.execute(
                    "UPDATE webhook_deliveries SET status = 'delivered', attempts = ?, last_status = ?, last_error = NULL,"
                    " delivered = ? WHERE id = ?",
                    (attempt, status, now, delivery_id),
                )
            elif attempt >= self.settings.max_attempts:
                await tx.execute(
                    "UPDATE webhook_deliveries SET status = 'dead', attempts = ?, last_status = ?, last_error = ? WHERE id = ?",
                    (attempt, status, error, delivery_id),
                )
                log.warning("webhook delivery dead-lettered", extra={"delivery": delivery_id, "error": error})
            else:
                delay = backoff_delay(attempt, self.settings.backoff, self.settings.max_backoff)
                await tx.execute(
                    "UPDATE webhook_deliveries SET attempts = ?, last_status = ?, last_error = ?, next_attempt = ?"
                    " WHERE id = ?",
                    (attempt, status, error, now + delay, delivery_id),
                )
