"""Subscriptions: a durable outbox of events, delivered to webhooks at least once.

Other components publish with ``emit(tx, event_type, repository, payload)`` inside the
transaction that records the change the event describes (``full.built`` is emitted by
full builds this way); ``WebhookDelivery`` sends them."""

from .delivery import SIGNATURE_HEADER, WebhookDelivery, backoff_delay, sign
from .outbox import DELIVERY_STATUSES, EVENT_TYPES, SCHEMA, emit, event_body
from .subscriptions import SubscriptionPatch, SubscriptionSpec, SubscriptionStore

__all__ = [
    "DELIVERY_STATUSES",
    "EVENT_TYPES",
    "SCHEMA",
    "SIGNATURE_HEADER",
    "SubscriptionPatch",
    "SubscriptionSpec",
    "SubscriptionStore",
    "WebhookDelivery",
    "backoff_delay",
    "emit",
    "event_body",
    "sign",
]
