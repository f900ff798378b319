"""Typed application state shared by handlers (``web.AppKey``, never string keys)."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..meta import Database
from ..metrics import Metrics
from ..service.events import EventBus
from ..service.policy import PolicyChain
from ..service.registry import RegistryService

__all__ = ["CONFIG", "DATABASE", "EVENTS", "METRICS", "POLICY", "REGISTRY", "PRINCIPAL", "REQUEST_ID"]

CONFIG = web.AppKey("config", Config)
DATABASE = web.AppKey("database", Database)
EVENTS = web.AppKey("events", EventBus)
METRICS = web.AppKey("metrics", Metrics)
POLICY = web.AppKey("policy", PolicyChain)
REGISTRY = web.AppKey("registry", RegistryService)

# Per-request keys (plain strings: aiohttp requests take str keys).
PRINCIPAL = "algomint.principal"
REQUEST_ID = "algomint.request_id"
