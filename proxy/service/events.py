"""In-process events raised by the registry service (the seam assembly subscribes to)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..oci.manifest import ParsedManifest

__all__ = ["EventBus", "ManifestStored", "ManifestDeleted", "Listener"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestStored:
    """A manifest was stored (and tagged, when ``tag`` is set) in ``repo``."""

    repo: str
    digest: str
    media_type: str
    tag: str | None
    manifest: ParsedManifest
    actor: str | None = None


@dataclass(frozen=True)
class ManifestDeleted:
    repo: str
    reference: str
    actor: str | None = None


Event = ManifestStored | ManifestDeleted
Listener = Callable[[Event], Awaitable[None]]


class EventBus:
    """Calls listeners in order after the state change is durable.

    Listeners must be quick (queue work, don't do it); a failing listener is logged and
    does not fail the request whose change already happened."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def publish(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                await listener(event)
            except Exception:  # noqa: BLE001 - one listener must not break the others
                log.exception("event listener failed", extra={"event": type(event).__name__})
