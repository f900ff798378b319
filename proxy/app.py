"""Application wiring: build the services from config and mount the HTTP routes.

Lifetimes go through ``cleanup_ctx``: open on start-up, ``yield``, close on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from aiohttp import web

from packer.catalog import Catalog
from packer.chains import ChainError
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
from .api.manage import catalog as catalog_api
from .api.manage import gc as gc_api
from .api.manage.openapi import OPENAPI, build_document, openapi_router
from .api.ops import add_ops_routes, add_ready_check
from .api.slowclients import guard_slow_clients
from .api.routes import V2_ROUTES, add_routes
from .api.state import (CONFIG, DATABASE, EVENTS, IN_FLIGHT, LEASES, METRICS, PACKER, POLICY, REGISTRY, REPLICA,
                        VERSIONS, InFlight)
from .api.v2 import HANDLERS
from .audit.middleware import AUDIT, audit_requests, setup_audit
from .audit.records import AuditEvent
from .auth.middleware import authenticate
from .auth.setup import setup_auth
from .backend import Backend
from .backend.factory import create_backend
from .backend.filesystem import FilesystemBackend
from .backend.remote import RegistryBackend
from .cluster import EmbeddedStorageLock, Leases, StorageInUse, VersionWatch, bump, replica_id
from .cluster.versions import MANIFESTS
from .config import Config, ConfigError
from .meta import MetadataError, create_database
from .metrics import Metrics
from .oci.errors import RegistryError
from .oci.reference import is_digest
from .service import immutable, journal, referrers, repositories
from .service.events import Event, EventBus, ManifestDeleted
from .service.gc import Collector
from .service.gcruns import GcRun, GcRuns
from .service.policy import AllowAll, PolicyChain
from .service.registry import RegistryService
from .startup import StartupError, one_line
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
    app[DATABASE] = create_database(config.metadata)
    app[REPLICA] = replica = replica_id(config.server.replica_id)
    app[METRICS].replica_info.labels(replica).set(1)
    app[LEASES] = Leases(app[DATABASE], replica, config.cluster.lease, config.cluster.heartbeat)
    app[VERSIONS] = VersionWatch(app[DATABASE], config.cluster.poll_interval)
    # Plugin versions are named by provenance: their tags never change content (DESIGN §7).
    immutable_tags = immutable.ImmutableTags(app[DATABASE], (config.assembly.plugins_prefix,))
    try:
        app[BACKEND] = backend = backend or create_backend(config.storage)
    except ValueError as exc:  # a URL the config model could not judge on its own
        raise ConfigError(f"storage.url: {exc}") from None
    if isinstance(backend, RegistryBackend):
        retries = app[METRICS].backend_retries
        backend.on_retry = lambda method, reason: retries.labels(method, reason).inc()
    # A registry backend's catalog cannot resume a page in string order: algomint keeps its own.
    catalog = (repositories.RepositoryCatalog(app[DATABASE], backend)
               if config.storage.backend == "registry" else None)
    app[REGISTRY] = RegistryService(
        backend,
        referrers.ReferrersIndex(app[DATABASE], backend),
        app[EVENTS],
        journal.ChangeJournal(app[DATABASE], app[LEASES]),
        max_manifest_bytes=config.server.max_manifest_bytes,
        manifest_cache_bytes=config.server.manifest_cache_bytes,
        immutable=immutable_tags,
        catalog=catalog,
    )
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_cluster)  # after storage; closes after every job runner stopped
    app.cleanup_ctx.append(_catalog_walks)  # after storage: reads the database and the backend
    setup_cursors(app)  # after storage: the key lives in the database
    setup_audit(app)  # after storage: the log is flushed before the database closes
    setup_auth(app)  # users, tokens, grants; with [auth] enabled the permission policy and /token
    app[POLICY].add(immutable_tags)  # after permissions: who may ask is answered first
    app[fullbuilds.FULL_BUILDS] = builds = FullBuildService(
        app[REGISTRY], app[DATABASE], config.full_builds, config.licenses, _namespaces(config), policy=app[POLICY],
        leases=app[LEASES],
    )
    app[POLICY].add(FreezePolicy(builds.store, lambda: builds.license_suffixes, builds.namespaces))
    app[REGISTRY].virtual = builds.builder.runnable  # runnable full images: manifests, configs, package layers
    app.cleanup_ctx.append(_full_builds)  # after storage: needs the database and backend open
    app[PACKER] = Packer(config, app[DATABASE], app[REGISTRY], app[EVENTS], policy=app[POLICY], leases=app[LEASES],
                         versions=app[VERSIONS])
    builds.on_emit = app[PACKER].webhooks.notify  # full.built is sent at once, like assembly events
    app[catalog_api.CATALOG] = Catalog(app[DATABASE], app[REGISTRY], config.assembly.generic_prefix)
    app[METRICS].on_scrape(StateGauges(app[DATABASE], app[METRICS].registry).refresh)
    app.cleanup_ctx.append(_packer)  # after storage: needs the database and backend open
    add_ready_check(app, "sandbox", app[PACKER].sandbox_status)  # function and job plugins' sandbox
    app[gc_api.GC_RUNS] = _gc_runs(app, backend)
    app.cleanup_ctx.append(_gc)  # after storage and full builds: needs the database and frozen tags
    _share_manifest_deletes(app)
    app.cleanup_ctx.append(_replay_changes)  # every event listener is subscribed
    app.cleanup_ctx.append(_drain_writes)  # last, so first to close: writes end while all is open
    app.on_response_prepare.append(middleware.add_api_version)
    app.on_response_prepare.append(middleware.note_headers_sent)
    add_routes(app, V2_ROUTES, HANDLERS)
    add_ops_routes(app)
    routers = [openapi_router]
    routers += [users.router, tokens.router, grants.router, audit_api.router, whoami.router]
    routers += [fullbuilds.router, archive_api.router, gc_api.router]
    routers += [chains.router, plugins.router, assemblies.router, subscriptions.router]
    routers += [catalog_api.router]
    manage.mount(app, routers)
    app[OPENAPI] = build_document(routers)
    setup_ui(app, routers)  # the web console, over the same routes and policy
    return app


async def _cluster(app: web.Application) -> AsyncIterator[None]:
    """Leases and shared versions: other replicas' jobs and changes (docs/deploy.md)."""
    await app[LEASES].start()
    await app[VERSIONS].start()
    yield
    await app[VERSIONS].close()
    await app[LEASES].close()  # job runners closed first: what they held is handed over


def _lock_embedded(app: web.Application) -> EmbeddedStorageLock | None:
    """One process per embedded storage: its upload sessions and GC fences are in memory."""
    config, backend = app[CONFIG], app[BACKEND]
    if not isinstance(backend, FilesystemBackend):
        return None
    lock = EmbeddedStorageLock(backend.root)
    try:
        lock.acquire(app[REPLICA])
    except StorageInUse as exc:
        raise StartupError(f"storage.path {config.storage.path}: {exc}") from exc
    except OSError as exc:
        raise StartupError(f"storage.path {config.storage.path}: {_reason(exc)}") from exc
    return lock


async def _storage(app: web.Application) -> AsyncIterator[None]:
    db, backend, config = app[DATABASE], app[BACKEND], app[CONFIG]
    lock = _lock_embedded(app)
    try:
        await db.open()
        await db.migrate("referrers", referrers.SCHEMA)
        await db.migrate("journal", journal.SCHEMA)
        await db.migrate("immutable", immutable.SCHEMA)
        await db.migrate("catalog", repositories.SCHEMA)
    except (OSError, MetadataError) as exc:
        if lock is not None:
            lock.release()
        raise StartupError(f"{db.where}: {_reason(exc)}") from exc
    try:
        await backend.start()
    except (OSError, RegistryError) as exc:
        await db.close()  # a start-up that fails here leaves nothing open behind it
        if lock is not None:
            lock.release()
        remote = config.storage.backend == "registry"
        where = f"storage.url {config.storage.url}" if remote else f"storage.path {config.storage.path}"
        raise StartupError(f"{where}: {_reason(exc)}") from exc
    # Sweep often enough that a short expiry is honoured roughly on time.
    interval = min(_SWEEP_INTERVAL, config.storage.upload_expiry / 2)
    sweeper = asyncio.create_task(_sweep_uploads(backend, interval))
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    # Writes started by a late cleanup step: the metadata store outlives every one.
    await app[REGISTRY].drain()
    await backend.close()
    await db.close()
    if lock is not None:
        lock.release()


async def _catalog_walks(app: web.Application) -> AsyncIterator[None]:
    """The registry backend's catalog walked at start and every interval, in the background
    (pages come from upstream's whole catalog until the first walk has finished)."""
    catalog = app[REGISTRY].repository_catalog
    if catalog is None:
        yield
        return
    await catalog.load()
    walks = asyncio.create_task(catalog.run(app[CONFIG].storage.catalog_reconcile_interval))
    yield
    walks.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await walks


async def _drain_writes(app: web.Application) -> AsyncIterator[None]:
    yield
    # Manifest writes whose clients left run on, shielded; they need the store open.
    await app[REGISTRY].drain()


def _gc_runs(app: web.Application, backend: Backend) -> GcRuns:
    """Garbage collection runs; the embedded storage only (a registry collects its own)."""
    config = app[CONFIG].gc
    collector = None
    if isinstance(backend, FilesystemBackend):
        collector = Collector(backend, app[REGISTRY], grace_period=config.grace_period,
                              delete_untagged=config.delete_untagged, roots=lambda: _frozen_roots(app))
    metrics = app[METRICS]

    def finished(run: GcRun) -> None:
        metrics.gc_runs.labels(run.status, str(run.dry_run).lower()).inc()
        metrics.gc_last_run.labels(run.status).set(run.finished_at or 0)
        metrics.gc_duration.observe((run.finished_at or run.started_at) - run.started_at)
        counts = run.counts
        if not run.dry_run:
            metrics.gc_removed.labels("layer_link").inc(counts.layer_links_removed)
            metrics.gc_removed.labels("manifest").inc(counts.manifests_removed)
            metrics.gc_removed.labels("blob").inc(counts.blobs_removed)
            metrics.gc_reclaimed_bytes.inc(counts.bytes_reclaimed)
        app[AUDIT].record(AuditEvent(
            action="gc.run", outcome="success" if run.status == "succeeded" else "failure",
            actor=run.actor, actor_kind=run.actor_kind,
            reference=run.id, detail={"dry_run": run.dry_run, "trigger": run.trigger, "error": run.error,
                                      **counts.to_json()},
        ))

    return GcRuns(app[DATABASE], collector, on_finish=finished)


async def _frozen_roots(app: web.Application) -> dict[str, set[str]]:
    """Digests full builds froze, per repository: the manifests they tagged and every digest
    those and the source runtime images reference (``frozen_blobs``). Live in a collection
    even untagged or named by no live manifest (a layer synthesised from a source layer)."""
    roots: dict[str, set[str]] = {}
    for row in await app[DATABASE].fetchall("SELECT repository, digest FROM frozen_tags UNION "
                                            "SELECT repository, digest FROM frozen_blobs"):
        roots.setdefault(row["repository"], set()).add(row["digest"])
    return roots


async def _gc(app: web.Application) -> AsyncIterator[None]:
    runs, interval = app[gc_api.GC_RUNS], app[CONFIG].gc.interval
    await runs.start()
    schedule = (asyncio.create_task(runs.schedule(interval))
                if interval > 0 and runs.collector is not None else None)
    yield
    if schedule is not None:
        schedule.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await schedule
    await runs.close()


def _share_manifest_deletes(app: web.Application) -> None:
    """Manifests are cached by digest on every replica: a delete anywhere clears them all."""
    db, registry = app[DATABASE], app[REGISTRY]

    async def deleted(event: Event) -> None:
        if isinstance(event, ManifestDeleted) and is_digest(event.reference):
            async with db.transaction() as tx:
                await bump(tx, MANIFESTS)

    app[EVENTS].subscribe(deleted)
    app[VERSIONS].on_change(MANIFESTS, registry.forget_cached_manifests)


async def _replay_changes(app: web.Application) -> AsyncIterator[None]:
    await _replay_once(app)
    # Another replica may die mid-change at any time: look again once per lease.
    task = asyncio.create_task(_replay_every(app, app[CONFIG].cluster.lease))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _replay_once(app: web.Application, own: bool = True) -> None:
    replayed = await app[REGISTRY].replay_changes(own=own)
    if replayed:
        log.info("manifest changes interrupted by a crash finished", extra={"count": replayed})


async def _replay_every(app: web.Application, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await _replay_once(app, own=False)  # this replica's own are in flight, not lost
        except Exception:  # noqa: BLE001 - the next pass tries again
            log.exception("replaying interrupted manifest changes failed")


async def _packer(app: web.Application) -> AsyncIterator[None]:
    try:
        await app[PACKER].start()
    except BaseException as exc:
        await app[PACKER].close()  # stop whatever part of it did start
        if isinstance(exc, ChainError):  # the chains file does not parse
            raise StartupError(f"chains.file: {exc}") from exc
        raise
    yield
    await app[PACKER].close()


def _reason(exc: Exception) -> str:
    """Why a store could not be opened, in a few words (an OS error's text, a registry error's detail)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f" ({exc.filename})" if exc.filename else "")
    detail = getattr(exc, "detail", None)
    if isinstance(detail, dict) and detail.get("error"):
        return f"cannot {detail.get('action', 'open it')}: {detail['error']}"
    return one_line(exc)


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
