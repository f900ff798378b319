"""The full-build queue: submit (validated, de-duplicated), durable records, workers.

Each running build is leased by its replica (``proxy.cluster.leases``): a build whose
replica died is found ``running`` without a live lease and claimed by any replica; a
shutdown hands its builds back at once. It re-runs from the start, which is safe because
tags are written last; only the replica holding the lease records the outcome and the
``full.built`` event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Callable

from proxy.cluster.leases import LeaseLost, Leases
from proxy.meta import Database, MetadataError
from proxy.meta.db import Transaction
from proxy.oci.errors import RegistryError
from proxy.service.policy import SYSTEM, PolicyChain, Principal
from proxy.service.registry import RegistryService

from ..webhooks.outbox import emit
from ..licensing.licenser import Licenser, build_licensers
from ..licensing.settings import LicenseConfig
from .builder import BuildError, FullBuilder, Tracker
from .names import BuildInputError, Namespaces, PackageName
from .settings import FullBuildConfig
from .store import LEASE, BuildRecord, BuildStore

__all__ = ["FullBuildService", "BuildInputError"]

log = logging.getLogger(__name__)
_FLUSH_INTERVAL = 1.0
_PENDING_POLL = 0.1  # how often a waiting build request looks at the assembly queue again


class FullBuildService:
    def __init__(self, service: RegistryService, db: Database, settings: FullBuildConfig,
                 licenses: dict[str, LicenseConfig], namespaces: Namespaces,
                 licensers: dict[str, Licenser] | None = None, policy: PolicyChain | None = None, *,
                 leases: Leases) -> None:
        self.settings = settings
        self.leases = leases
        self.namespaces = namespaces
        self.licensers = licensers if licensers is not None else build_licensers(licenses)
        self.store = BuildStore(db)
        self.builder = FullBuilder(service, self.licensers, licenses, settings, namespaces, self.store, policy)
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._running: set[str] = set()
        # Called after an event is committed to the outbox (wakes the webhook sender).
        self.on_emit: Callable[[], None] = lambda: None

    @property
    def license_suffixes(self) -> tuple[str, ...]:
        return tuple(f"-{kind}" for kind in self.licensers)

    async def start(self) -> None:
        await self.store.migrate()
        self._workers = [asyncio.create_task(self._worker(i), name=f"full-build-{i}")
                         for i in range(self.settings.workers)]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        # Builds cut short by shutdown: queued again now, for any replica to take.
        for build_id in list(self._running):
            with contextlib.suppress(MetadataError):
                await self.store.hand_back(self.leases, build_id)
        self._running.clear()

    async def submit(self, package: str, license: str, requester: Principal = SYSTEM) -> tuple[BuildRecord, bool]:
        """Queue a build as ``requester``; returns (record, created). The same package
        content and license already queued, running or built returns that build instead
        (once the requester is known to hold every right the build needs)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.assembly_wait
        parsed = await self.builder.readable(package, license, requester)
        while True:
            # Pending assembly jobs of the package first: the package they write is the one
            # to build, and checking before they finish would judge content about to change.
            pending = await self.store.pending_assemblies(parsed.repository, parsed.version)
            if not pending:
                name, digest, source_repo = await self.builder.check(package, license, requester)
                existing = await self.store.find_reusable(name.repository, name.version, license, digest)
                if existing is not None:
                    return existing, False
                holds = [(name.repository, name.version), (source_repo, name.version)]
                created = await self.store.create(str(name), name.repository, name.version, license, digest,
                                                  requester, holds)
                if isinstance(created, BuildRecord):
                    self._wake.set()
                    return created, True
                pending = created  # a push queued a job since the check: wait for it too
            if loop.time() >= deadline:
                raise self._pending_error(parsed, pending)
            await asyncio.sleep(min(_PENDING_POLL, max(0.0, deadline - loop.time())))

    def _pending_error(self, name: PackageName, pending: list[tuple[int, str]]) -> BuildInputError:
        jobs = ", ".join(f"{job} ({status})" for job, status in pending)
        return BuildInputError(
            409, f"{name} has assembly jobs still to finish: {jobs}; a full build now would freeze the package "
                 f"before they write it. Request the build again once they have finished "
                 f"(waited {self.settings.assembly_wait:g}s)",
            {"field": "package", "assemblies": [{"id": job, "status": status} for job, status in pending]},
        )

    async def _worker(self, number: int) -> None:
        while True:
            try:
                claimed = await self.store.claim_next(self.leases)
            except MetadataError:
                log.exception("full-build queue unavailable")
                claimed = None
            if claimed is None:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
                continue
            record, previous = claimed
            if previous is not None:
                log.warning("full build taken over from a replica that stopped renewing its lease",
                            extra={"build": record.id, "previous": previous})
            self._running.add(record.id)  # until it ends here; a cancelled one is handed back in close
            try:
                await self.leases.run(LEASE, record.id, self._run(record))
            except LeaseLost as exc:
                log.warning("full build stopped: %s", exc, extra={"build": record.id})
            except MetadataError:
                # Outcome not recorded: the lease expires and a replica runs the build again.
                log.exception("full build outcome not recorded", extra={"build": record.id})
            self._running.discard(record.id)

    async def _run(self, record: BuildRecord) -> None:
        tracker = Tracker()
        warnings: list[str] = []
        log.info("full build started", extra={"build": record.id, "package": record.package, "license": record.license})

        async def planned() -> None:
            await self.store.set_layers(record.id, list(tracker.layers.values()), tracker.bytes_total)

        async def flush_loop() -> None:
            while True:
                await asyncio.sleep(_FLUSH_INTERVAL)
                if tracker.dirty:
                    tracker.dirty = False
                    with contextlib.suppress(MetadataError):
                        await self.store.save_progress(record.id, tracker.bytes_done, tracker.layers.values())

        flusher = asyncio.create_task(flush_loop())
        try:
            result, freezes, content = await self.builder.run(record, tracker, planned, warnings)
        except asyncio.CancelledError:
            raise  # shutdown (handed back in close) or the lease was lost
        except (BuildError, RegistryError, BuildInputError) as exc:
            await self._fail(record, tracker, str(getattr(exc, "message", None) or exc), warnings)
        except Exception as exc:  # noqa: BLE001 - a build must end in a recorded state
            log.exception("full build crashed", extra={"build": record.id})
            await self._fail(record, tracker, f"internal error: {type(exc).__name__}: {exc}", warnings)
        else:
            await self.store.save_progress(record.id, tracker.bytes_total, tracker.layers.values())
            await self.store.succeed(record.id, result, warnings, freezes, content,
                                     also=self._built_event(record, result), leases=self.leases)
            self.on_emit()
            log.info("full build succeeded", extra={"build": record.id, "tag": result["tag"]})
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

    @staticmethod
    def _built_event(record: BuildRecord, result: dict[str, Any]) -> Callable[[Transaction], Awaitable[str]]:
        payload = {"build": record.id, "package": record.package, "license": record.license,
                   "source_digest": record.source_digest, "tag": result["tag"], "digest": result["digest"],
                   "images": [{"ref": i["ref"], "licensed": i["licensed"], "digest": i["digest"]}
                              for i in result.get("images", [])]}
        return lambda tx: emit(tx, "full.built", record.repository, payload)

    async def _fail(self, record: BuildRecord, tracker: Tracker, error: str, warnings: list[str]) -> None:
        log.warning("full build failed", extra={"build": record.id, "error": error})
        with contextlib.suppress(MetadataError):
            await self.store.save_progress(record.id, tracker.bytes_done, tracker.layers.values())
        await self.store.fail(record.id, error, warnings, leases=self.leases)

    async def get(self, build_id: str) -> BuildRecord | None:
        return await self.store.get(build_id)

    async def list(self, limit: int, cursor: Any = None, **filters: Any) -> list[BuildRecord]:
        return await self.store.list(limit, tuple(cursor) if cursor else None, **filters)
