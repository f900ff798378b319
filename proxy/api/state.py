"""Typed application state shared by handlers (``web.AppKey``, never string keys)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..cluster import Leases, VersionWatch
from ..config import Config
from ..meta import Database
from ..metrics import Metrics
from ..service.events import EventBus
from ..service.policy import PolicyChain
from ..service.registry import RegistryService
from packer.runtime import Packer

__all__ = ["IN_FLIGHT", "InFlight", "CONFIG", "DATABASE", "EVENTS", "METRICS", "POLICY", "REGISTRY", "PACKER", "PRINCIPAL", "REQUEST_ID",
           "REPLICA", "LEASES", "VERSIONS"]

class InFlight:
    """Counts requests being handled, so shutdown can wait until none are left."""

    def __init__(self) -> None:
        self.count = 0
        self.started = 0  # ever: tells a quiet spell with no request from one with some
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self.started += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


CONFIG = web.AppKey("config", Config)
DATABASE = web.AppKey("database", Database)
EVENTS = web.AppKey("events", EventBus)
METRICS = web.AppKey("metrics", Metrics)
POLICY = web.AppKey("policy", PolicyChain)
REGISTRY = web.AppKey("registry", RegistryService)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
PACKER = web.AppKey("packer", Packer)  # chains, plugins, assembly jobs, subscriptions
REPLICA = web.AppKey("replica", str)  # this replica's id (logs, metrics, leases)
LEASES = web.AppKey("leases", Leases)  # claims on background jobs, shared with other replicas
VERSIONS = web.AppKey("versions", VersionWatch)  # changes other replicas made to cached state

# Per-request keys (plain strings: aiohttp requests take str keys).
PRINCIPAL = "algomint.principal"
REQUEST_ID = "algomint.request_id"
