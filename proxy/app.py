"""Application wiring: build the services from config and mount the HTTP routes.

Lifetimes go through ``cleanup_ctx``: open on start-up, ``yield``, close on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from aiohttp import web

from packer.fullbuild.freeze import FreezePolicy
from packer.fullbuild.names import Namespaces
from packer.fullbuild.service import FullBuildService
from packer.metrics import StateGauges
from packer.runtime import Packer

from .api import manage, middleware
from .api.manage import archive as archive_api
from .api.manage import assemblies, chains, fullbuilds, grants, plugins, subscriptions, tokens, users, whoami
from .api.manage import audit as audit_api
from .api.manage.cursors import setup_cursors
from .api.manage.openapi import OPENAPI, build_document, openapi_router
from .api.ops import add_ops_routes, add_ready_check
from .api.slowclients import guard_slow_clients
from .api.routes import V2_ROUTES, add_routes
from .api.state import CONFIG, DATABASE, EVENTS, IN_FLIGHT, METRICS, PACKER, POLICY, REGISTRY, InFlight
from .api.v2 import HANDLERS
from .audit.middleware import audit_requests, setup_audit
from .auth.middleware import authenticate
from .auth.setup import setup_auth
from .backend import Backend
from .backend.factory import create_backend
from .config import Config
from .meta import Database
from .metrics import Metrics
from .service import journal, referrers
from .service.events import EventBus
from .service.policy import AllowAll, PolicyChain
from .service.registry import RegistryService
from .ui import setup_ui

__all__ = ["create_app", "BACKEND"]

log = logging.getLogger(__name__)

BACKEND = web.AppKey("backend", Backend)
# How often expired upload sessions are swept.
_SWEEP_INTERVAL = 600.0


def create_app(config: Config, *, backend: Backend | None = None) -> web.Application:
    app = web.Application(
        middlewares=[middleware.observe, guard_slow_clients, audit_requests, middleware.render_errors,
                     *([authenticate] if config.auth.enabled else []), middleware.policy_check],
        client_max_size=1024**4,  # bodies are streamed; limits are enforced per route
    )
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[IN_FLIGHT] = InFlight()
    app[EVENTS] = EventBus()
    app[POLICY] = PolicyChain([AllowAll()])
    app[DATABASE] = Database(config.metadata.path)
    app[BACKEND] = backend = backend or create_backend(config.storage)
    app[REGISTRY] = RegistryService(
        backend,
        referrers.ReferrersIndex(app[DATABASE], backend),
        app[EVENTS],
        journal.ChangeJournal(app[DATABASE]),
        max_manifest_bytes=config.server.max_manifest_bytes,
    )
    app.cleanup_ctx.append(_storage)
    setup_cursors(app)  # after storage: the key lives in the database
    setup_audit(app)  # after storage: the log is flushed before the database closes
    setup_auth(app)  # users, tokens, grants; with [auth] enabled the permission policy and /token
    app[fullbuilds.FULL_BUILDS] = builds = FullBuildService(
        app[REGISTRY], app[DATABASE], config.full_builds, config.licenses, _namespaces(config), policy=app[POLICY]
    )
    app[POLICY].add(FreezePolicy(builds.store, lambda: builds.license_suffixes, builds.namespaces))
    app.cleanup_ctx.append(_full_builds)  # after storage: needs the database and backend open
    app[PACKER] = Packer(config, app[DATABASE], app[REGISTRY], app[EVENTS], policy=app[POLICY])
    app[METRICS].on_scrape(StateGauges(app[DATABASE], app[METRICS].registry).refresh)
    app.cleanup_ctx.append(_packer)  # after storage: needs the database and backend open
    add_ready_check(app, "sandbox", app[PACKER].sandbox_status)  # function and job plugins' sandbox
    app.cleanup_ctx.append(_replay_changes)  # last: every event listener is subscribed
    app.on_response_prepare.append(middleware.add_api_version)
    app.on_response_prepare.append(middleware.note_headers_sent)
    add_routes(app, V2_ROUTES, HANDLERS)
    add_ops_routes(app)
    routers = [openapi_router]
    routers += [users.router, tokens.router, grants.router, audit_api.router, whoami.router]
    routers += [fullbuilds.router, archive_api.router]
    routers += [chains.router, plugins.router, assemblies.router, subscriptions.router]
    manage.mount(app, routers)
    app[OPENAPI] = build_document(routers)
    setup_ui(app, routers)  # the web console, over the same routes and policy
    return app


async def _storage(app: web.Application) -> AsyncIterator[None]:
    db, backend = app[DATABASE], app[BACKEND]
    await db.open()
    await db.migrate(referrers.SCHEMA + journal.SCHEMA)
    await backend.start()
    # Sweep often enough that a short expiry is honoured roughly on time.
    interval = min(_SWEEP_INTERVAL, app[CONFIG].storage.upload_expiry / 2)
    sweeper = asyncio.create_task(_sweep_uploads(backend, interval))
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await backend.close()
    await db.close()


async def _replay_changes(app: web.Application) -> AsyncIterator[None]:
    replayed = await app[REGISTRY].replay_changes()
    if replayed:
        log.info("manifest changes interrupted by a crash finished", extra={"count": replayed})
    yield


async def _packer(app: web.Application) -> AsyncIterator[None]:
    await app[PACKER].start()
    yield
    await app[PACKER].close()


def _namespaces(config: Config) -> Namespaces:
    return Namespaces(
        generic=config.assembly.generic_prefix,
        business=config.assembly.business_prefix,
        images=config.full_builds.images_prefix,
    )


async def _full_builds(app: web.Application) -> AsyncIterator[None]:
    await app[fullbuilds.FULL_BUILDS].start()
    yield
    await app[fullbuilds.FULL_BUILDS].close()


async def _sweep_uploads(backend: Backend, interval: float) -> None:
    while True:
        try:
            removed = await backend.purge_expired_uploads()
            if removed:
                log.info("expired upload sessions removed", extra={"count": removed})
        except Exception:  # noqa: BLE001 - the sweeper must outlive a bad pass
            log.exception("upload sweep failed")
        await asyncio.sleep(interval)
