"""Assembly: generic package + plugins[1..N] = business package, as durable jobs.

A tag push to a repository matched by a chain queues one job per chain (SQLite, in the
same transaction as the ``generic.pushed`` event), and the push returns. Workers claim
jobs in order — never two at once for the same business tag, so the last push wins — and
fold the package through the chain's plugins, resolved to digests when the job starts.
Only when every plugin succeeded is ``business/<system>/<algorithm>:<version>`` written
(artifactType business, ``subject`` = the generic manifest, provenance annotations); an
identical result is not written again. The job's final state and its event
(``business.assembled`` / ``assembly.failed``) commit together.

Several replicas share the queue: a running job is leased by the replica running it
(``proxy.cluster.leases``, kind ``assembly``). A job whose replica died is found
``running`` without a live lease and claimed by any replica, which runs it again from
the start (assembly is idempotent); only the lease holder records the outcome, so the
event is emitted once. A shutdown queues its own running jobs again at once; start-up
takes nothing, so a restarting replica never steals a live one's job."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Sequence

from proxy.cluster.leases import LeaseLost, Leases
from proxy.meta import Database, MetadataError
from proxy.oci import mediatypes as mt
from proxy.oci.errors import RegistryError
from proxy.oci.manifest import parse_manifest
from proxy.oci.reference import is_digest, parse_reference, sha256_digest
from proxy.service.events import Event, ManifestDeleted, ManifestStored
from proxy.service.policy import SYSTEM, Action, PolicyChain, Request as PolicyRequest
from proxy.service.registry import RegistryService

from .chains import Chain, ChainRegistry
from .descriptor import AlgorithmDescriptor, DescriptorError
from .package import (
    ANNOTATION_CHAIN,
    ANNOTATION_PLUGINS,
    ANNOTATION_SOURCE,
    ANNOTATION_SOURCE_REPOSITORY,
    Package,
    PackageError,
    build_manifest,
    read_package,
    write_package,
)
from .plugin import PluginContext, PluginEnv, PluginError, PluginStore, ResolvedPlugin
from .settings import AssemblyConfig
from .webhooks import emit

__all__ = ["SCHEMA", "AssemblyError", "AssemblyService", "JobLog", "RequestError", "STATUSES"]

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed", "skipped")  # skipped: a chain platform filter
LEASE = "assembly"
MAX_REQUESTED_JOBS = 10_000
_LIST_BATCH = 500  # names per listing page while walking a chain's repositories
# How long shutdown waits for workers finishing a shielded write.
_CLOSE_TIMEOUT = 10.0
# Tags of the referrers fallback schema (``sha256-<hex>``) are bookkeeping, not versions.
_FALLBACK_TAG_RE = re.compile(r"^(sha256-[a-f0-9]{64}|sha512-[a-f0-9]{128})$")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS assembly_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chain TEXT NOT NULL,
        source_repo TEXT NOT NULL,
        source_tag TEXT NOT NULL,
        source_digest TEXT NOT NULL,
        target_repo TEXT NOT NULL,
        target_tag TEXT NOT NULL,
        status TEXT NOT NULL,
        trigger TEXT NOT NULL,
        runs INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        plugins TEXT,
        result_digest TEXT,
        tag_written INTEGER,
        error TEXT,
        logs TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS assembly_jobs_status ON assembly_jobs (status, id)",
    "CREATE INDEX IF NOT EXISTS assembly_jobs_target ON assembly_jobs (target_repo, target_tag, status)",
    "CREATE INDEX IF NOT EXISTS assembly_jobs_result ON assembly_jobs (result_digest)",
    # "Jobs of a repository", newest first: one seek per side instead of a scan.
    "CREATE INDEX IF NOT EXISTS assembly_jobs_by_source ON assembly_jobs (source_repo, id)",
    "CREATE INDEX IF NOT EXISTS assembly_jobs_by_target ON assembly_jobs (target_repo, id)",
]


class AssemblyError(Exception):
    """Why a job failed: one line for people, plus where (plugin) and detail."""

    def __init__(self, reason: str, plugin: str | None = None, detail: Any = None) -> None:
        super().__init__(reason)
        self.reason, self.plugin, self.detail = reason, plugin, detail

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason}
        if self.plugin:
            out["plugin"] = self.plugin
        if self.detail is not None:
            out["detail"] = self.detail
        return out


class RequestError(ValueError):
    """A re-assembly request naming packages that can't be assembled; ``field`` says which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class JobLog:
    """A job's log, bounded: lines past the limit are counted, not kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[str] = []
        self._size = 0
        self.dropped = 0

    def write(self, line: str) -> None:
        line = line.rstrip("\n") + "\n"
        if self._size + len(line) > self.limit:
            self.dropped += len(line)
            return
        self._parts.append(line)
        self._size += len(line)

    def prefixed(self, prefix: str) -> Callable[[str], None]:
        def write(text: str) -> None:
            for line in text.splitlines() or [""]:
                self.write(f"[{prefix}] {line}")

        return write

    def text(self) -> str:
        tail = f"… {self.dropped} more bytes of log dropped\n" if self.dropped else ""
        return "".join(self._parts) + tail


@dataclass
class _Outcome:
    status: str
    plugins: list[dict[str, Any]] = field(default_factory=list)
    digest: str | None = None
    written: bool | None = None
    error: AssemblyError | None = None


def _job_json(row: Any, with_logs: bool = False) -> dict[str, Any]:
    started, finished = row["started"], row["finished"]
    out = {
        "id": row["id"],
        "chain": row["chain"],
        "status": row["status"],
        "trigger": row["trigger"],
        "runs": row["runs"],
        "source": {"repository": row["source_repo"], "tag": row["source_tag"], "digest": row["source_digest"]},
        "target": {"repository": row["target_repo"], "tag": row["target_tag"], "digest": row["result_digest"]},
        "tag_written": None if row["tag_written"] is None else bool(row["tag_written"]),
        "plugins": json.loads(row["plugins"]) if row["plugins"] else [],
        "error": json.loads(row["error"]) if row["error"] else None,
        "created": row["created"],
        "started": started,
        "finished": finished,
        "duration_ms": round((finished - started) * 1000, 2) if started and finished else None,
    }
    if with_logs:
        out["logs"] = row["logs"] or ""
    return out


class AssemblyService:
    def __init__(
        self,
        db: Database,
        registry: RegistryService,
        chains: ChainRegistry,
        plugins: PluginStore,
        env: PluginEnv,
        settings: AssemblyConfig,
        on_emit: Callable[[], None] = lambda: None,
        policy: PolicyChain | None = None,
        *,
        leases: Leases,
    ) -> None:
        self.db = db
        self.leases = leases
        self._running: set[int] = set()  # jobs this replica runs now
        self.registry = registry
        self.chains = chains
        self.plugins = plugins
        self.env = env
        self.settings = settings
        self.on_emit = on_emit
        self.policy = policy
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    # -- lifetime ---------------------------------------------------------------------
    async def start(self) -> None:
        self._workers = [asyncio.create_task(self._worker(i), name=f"assembly-{i}") for i in range(self.settings.workers)]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        if self._workers:
            # A worker inside a shielded write finishes it first; never wait on one forever.
            _, stuck = await asyncio.wait(self._workers, timeout=_CLOSE_TIMEOUT)
            if stuck:
                log.warning("assembly workers still busy at shutdown", extra={"count": len(stuck)})
        self._workers = []
        # Jobs cut short by this shutdown: queued again now, for any replica to take.
        for job_id in list(self._running):
            with contextlib.suppress(MetadataError):
                async with self.db.transaction() as tx:
                    if await self.leases.release(tx, LEASE, str(job_id)):
                        await tx.execute(
                            "UPDATE assembly_jobs SET status = 'queued', logs = COALESCE(logs, '') || ?"
                            " WHERE id = ? AND status = 'running'",
                            ("re-queued: the service stopped during the run\n", job_id))
        self._running.clear()

    # -- enqueueing -----------------------------------------------------------------
    def algorithm_of(self, repository: str) -> str:
        """The whole path under ``generic/``: ``generic/team-a/face`` is ``team-a/face``."""
        prefix = self.settings.generic_prefix
        return repository[len(prefix):] if repository.startswith(prefix) else repository

    def target_of(self, chain: Chain, repository: str) -> str:
        # The whole source path, so generic/team-a/face and generic/team-b/face never collide.
        return f"{self.settings.business_prefix}{chain.name}/{self.algorithm_of(repository)}"

    async def _insert(self, tx: Any, chain: Chain, repo: str, tag: str, digest: str, trigger: str) -> int:
        row = await tx.fetchone(
            "INSERT INTO assembly_jobs (chain, source_repo, source_tag, source_digest, target_repo, target_tag,"
            " status, trigger, created) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?) RETURNING id",
            (chain.name, repo, tag, digest, self.target_of(chain, repo), tag, trigger, time.time()),
        )
        return int(row["id"])

    async def on_event(self, event: Event) -> None:
        """The registry's event listener: queue work, never do it here."""
        if isinstance(event, ManifestDeleted):
            await self._forget_business(event)
            return
        if not isinstance(event, ManifestStored) or event.tag is None:
            return
        repo = event.repo
        if repo.startswith((self.settings.business_prefix, self.settings.plugins_prefix)):
            return
        if _FALLBACK_TAG_RE.match(event.tag):
            return
        chains = [] if event.manifest.is_index else self.chains.matching(repo)
        generic = repo.startswith(self.settings.generic_prefix)
        if not chains and not generic:
            return
        async with self.db.transaction() as tx:
            if generic:
                await emit(tx, "generic.pushed", repo, {
                    "repository": repo, "tag": event.tag, "digest": event.digest, "mediaType": event.media_type,
                    "actor": event.actor, "chains": [c.name for c in chains],
                })
            for chain in chains:
                await self._insert(tx, chain, repo, event.tag, event.digest, "push")
        self._wake.set()
        self.on_emit()

    async def _forget_business(self, event: ManifestDeleted) -> None:
        # The generic repository's referrers list names business packages made from it.
        if not event.repo.startswith(self.settings.business_prefix) or not is_digest(event.reference):
            return
        rows = await self.db.fetchall(
            "SELECT DISTINCT source_repo FROM assembly_jobs WHERE target_repo = ? AND result_digest = ?",
            (event.repo, event.reference),
        )
        for row in rows:
            await self.registry.referrers.forget(row["source_repo"], event.reference)

    async def _matching_tags(self, chain: Chain) -> AsyncIterator[tuple[str, str]]:
        """Every (repository, tag) ``chain`` matches, from paged listings."""
        backend = self.registry.backend
        for prefix in self.chains.prefixes(chain):
            after: str | None = None
            more = True
            while more:
                repos, more = await self.registry.repositories_page(_LIST_BATCH, after, prefix=prefix)
                for repo in repos:
                    after = repo
                    if not self.chains.matches(chain, repo):
                        continue
                    last: str | None = None
                    tags_more = True
                    while tags_more:
                        tags, tags_more = await backend.tags_page(repo, _LIST_BATCH, last)
                        for tag in tags:
                            if not _FALLBACK_TAG_RE.match(tag):
                                yield repo, tag
                        last = tags[-1] if tags else None
                        tags_more = tags_more and last is not None
                more = more and bool(repos)

    async def assemble(self, chain_name: str, packages: list[str] | None) -> list[int]:
        """Queue a chain for chosen ``repo:tag`` packages, or every tag of every matching repository."""
        chain = self.chains.get(chain_name)
        if chain is None:
            raise KeyError(chain_name)
        wanted: list[tuple[str, str]] = []
        if packages is not None:
            for i, ref in enumerate(packages):
                try:
                    parsed = parse_reference(ref, default_tag=None)
                except RegistryError as exc:
                    raise RequestError(f"packages.{i}", f"{ref!r}: {exc.message}") from None
                if parsed.tag is None or parsed.digest is not None:
                    raise RequestError(f"packages.{i}", f"{ref!r}: name a tag (repository:version)")
                if not self.chains.matches(chain, parsed.name):
                    raise RequestError(f"packages.{i}", f"{parsed.name} does not match chain {chain.name}")
                wanted.append((parsed.name, parsed.tag))
        else:
            # Walk only the name ranges the chain can match, a page at a time, and stop
            # as soon as there are too many: refusing costs at most the cap.
            async for repo, tag in self._matching_tags(chain):
                wanted.append((repo, tag))
                if len(wanted) > MAX_REQUESTED_JOBS:
                    raise RequestError("packages", f"more than {MAX_REQUESTED_JOBS} packages match; name them")
        resolved: list[tuple[str, str, str]] = []
        for i, (repo, tag) in enumerate(wanted):
            try:
                info = await self.registry.stat_manifest(repo, tag)
            except RegistryError as exc:
                raise RequestError(f"packages.{i}", f"{repo}:{tag}: {exc.message}") from None
            resolved.append((repo, tag, info.digest))
        async with self.db.transaction() as tx:
            ids = [await self._insert(tx, chain, repo, tag, digest, "api") for repo, tag, digest in resolved]
        self._wake.set()
        return ids

    # -- queries ----------------------------------------------------------------------
    async def get(self, job_id: int) -> dict[str, Any] | None:
        row = await self.db.fetchone("SELECT * FROM assembly_jobs WHERE id = ?", (job_id,))
        return _job_json(row, with_logs=True) if row else None

    async def list(self, limit: int, before: int | None = None, status: str | None = None, chain: str | None = None,
                   repository: str | None = None, prefixes: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Newest first. ``prefixes``: only jobs whose business repository starts with one of them."""
        where, params = "", []  # type: str, list[Any]
        if prefixes is not None:
            where += " AND (" + (" OR ".join("substr(target_repo, 1, ?) = ?" for _ in prefixes) or "0") + ")"
            params += [v for p in prefixes for v in (len(p), p)]
        if before is not None:
            where += " AND id < ?"
            params.append(before)
        if status:
            where += " AND status = ?"
            params.append(status)
        if chain:
            where += " AND chain = ?"
            params.append(chain)
        if not repository:
            rows = await self.db.fetchall(
                f"SELECT * FROM assembly_jobs WHERE 1 = 1{where} ORDER BY id DESC LIMIT ?", (*params, limit)
            )
        else:
            # A job names the repository as its source or its target: two index seeks,
            # each newest first and cut at the page, then merged (an OR would scan).
            side = "SELECT * FROM (SELECT * FROM assembly_jobs WHERE {0} = ?" + where + " ORDER BY id DESC LIMIT ?) AS by_{0}"
            rows = await self.db.fetchall(
                side.format("source_repo") + " UNION " + side.format("target_repo") + " ORDER BY id DESC LIMIT ?",
                (repository, *params, limit, repository, *params, limit, limit),
            )
        return [_job_json(r) for r in rows]

    # -- workers ----------------------------------------------------------------------
    async def _claim(self) -> Any:
        """The next runnable job, leased to this replica: queued, or running without a
        live lease (its replica died); never one whose target another job is writing."""
        now = self.leases.now()
        # A plain read first: an idle poll costs one statement and never queues on the
        # store's write lock. The decision is made again inside the transaction below.
        find = (
            "SELECT * FROM assembly_jobs j WHERE (j.status = 'queued' OR (j.status = 'running' AND NOT "
            + self.leases.live(LEASE, "CAST(j.id AS TEXT)") + ")) AND NOT EXISTS ("
            " SELECT 1 FROM assembly_jobs o WHERE o.target_repo = j.target_repo AND o.target_tag = j.target_tag"
            " AND o.id <> j.id AND ((o.status = 'running' AND " + self.leases.live(LEASE, "CAST(o.id AS TEXT)") + ")"
            " OR (o.id < j.id AND o.status IN ('queued', 'running'))))"
            # A target an accepted full build is made from waits for it: frozen if it
            # succeeds (the job then fails, or is a no-op), written if it fails.
            " AND NOT EXISTS (SELECT 1 FROM full_build_holds h JOIN full_builds b ON b.id = h.build_id"
            " WHERE h.repository = j.target_repo AND h.tag = j.target_tag AND b.state IN ('queued', 'running'))"
            " ORDER BY j.id LIMIT 1"
        )
        if await self.db.fetchone(find, (now, now)) is None:
            return None
        async with self.db.transaction() as tx:
            row = await tx.fetchone(find, (now, now))
            if row is None:
                return None
            previous = await self.leases.claim(tx, LEASE, str(row["id"]))
            if previous is False:
                return None  # another replica took it since the read
            note = "" if previous is None else f"taken over: replica {previous} stopped renewing its lease\n"
            await tx.execute(
                "UPDATE assembly_jobs SET status = 'running', started = ?, finished = NULL, runs = runs + 1,"
                " plugins = NULL, result_digest = NULL, tag_written = NULL, error = NULL,"
                " logs = COALESCE(logs, '') || ? WHERE id = ?",
                (time.time(), note, row["id"]),
            )
            if previous is not None:
                log.warning("assembly job taken over", extra={"job": row["id"], "previous": previous})
            return {**{k: row[k] for k in row.keys()}, "logs": (row["logs"] or "") + note}

    async def _worker(self, number: int) -> None:
        while True:
            try:
                self._wake.clear()
                # Writes are shielded: cancelling one half-way would leave the shared
                # connection inside an open transaction.
                row = await asyncio.shield(self._claim())
                if row is None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
                    continue
                self._running.add(row["id"])  # until it ends here; a cancelled one is handed back in close
                try:
                    await self.leases.run(LEASE, str(row["id"]), self._run(row))
                except LeaseLost as exc:
                    log.warning("assembly job stopped: %s", exc, extra={"job": row["id"]})
                self._running.discard(row["id"])
                self._wake.set()  # a job for the same target may be waiting for this one
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a worker must outlive any one job
                log.exception("assembly worker pass failed", extra={"worker": number})
                await asyncio.sleep(self.settings.poll_interval)

    async def _run(self, row: Any) -> None:
        job_log = JobLog(self.settings.log_limit)
        if row["logs"]:
            job_log.write(row["logs"])  # earlier, interrupted runs stay in the record
        job_log.write(f"run {row['runs'] + 1}: chain {row['chain']}, {row['source_repo']}:{row['source_tag']}@{row['source_digest']}")
        outcome = _Outcome("failed")
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._execute(row, job_log, outcome), self.settings.job_timeout)
            if outcome.status != "skipped":
                outcome.status = "succeeded"
        except asyncio.TimeoutError:
            outcome.error = AssemblyError(f"job timed out after {self.settings.job_timeout:g}s")
        except AssemblyError as exc:
            outcome.error = exc
        except RegistryError as exc:
            outcome.error = AssemblyError(f"registry: {exc.code}: {exc.message}", detail=exc.detail)
        except MetadataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken job must not stop the worker
            log.exception("assembly job failed unexpectedly", extra={"job": row["id"]})
            outcome.error = AssemblyError(f"internal error: {type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        if outcome.error is not None:
            job_log.write(f"failed after {elapsed * 1000:.0f} ms: {outcome.error.reason}")
        elif outcome.status == "skipped":
            pass  # _execute said why
        else:
            job_log.write(f"succeeded in {elapsed * 1000:.0f} ms: {row['target_repo']}:{row['target_tag']}@{outcome.digest}"
                          + ("" if outcome.written else " (unchanged, tag not rewritten)"))
        await asyncio.shield(self._finish(row, outcome, job_log))

    async def _finish(self, row: Any, outcome: _Outcome, job_log: JobLog) -> None:
        source = {"repository": row["source_repo"], "tag": row["source_tag"], "digest": row["source_digest"]}
        plugins = [f"{p['repository']}@{p['digest']}" for p in outcome.plugins]
        async with self.db.transaction() as tx:
            if not await self.leases.release(tx, LEASE, str(row["id"])):
                raise LeaseLost(f"assembly job {row['id']}: lease taken over by another replica")
            await tx.execute(
                "UPDATE assembly_jobs SET status = ?, finished = ?, plugins = ?, result_digest = ?, tag_written = ?,"
                " error = ?, logs = ? WHERE id = ?",
                (
                    outcome.status, time.time(), json.dumps(outcome.plugins), outcome.digest,
                    None if outcome.written is None else int(outcome.written),
                    json.dumps(outcome.error.to_json()) if outcome.error else None, job_log.text(), row["id"],
                ),
            )
            if outcome.status == "skipped":
                pass  # nothing was assembled: no event
            elif outcome.error is None:
                await emit(tx, "business.assembled", row["target_repo"], {
                    "job": row["id"], "chain": row["chain"], "repository": row["target_repo"],
                    "tag": row["target_tag"], "digest": outcome.digest, "changed": bool(outcome.written),
                    "source": source, "plugins": plugins,
                })
            else:
                await emit(tx, "assembly.failed", row["target_repo"], {
                    "job": row["id"], "chain": row["chain"], "repository": row["target_repo"],
                    "tag": row["target_tag"], "source": source, "plugins": plugins, "error": outcome.error.to_json(),
                })
        self.on_emit()

    async def _execute(self, row: Any, job_log: JobLog, outcome: _Outcome) -> None:
        chain = self.chains.get(row["chain"])
        if chain is None:
            raise AssemblyError(f"chain {row['chain']} no longer exists")
        resolved: list[ResolvedPlugin] = []
        for ref in chain.spec.plugins:
            try:
                resolved.append(await self.plugins.resolve(ref))
            except PluginError as exc:
                raise AssemblyError(exc.reason, ref) from None
        await self._check_owner(chain, row, resolved)
        job_log.write(f"reading as the chain's owner, {chain.owner.kind} {chain.owner.name}")  # type: ignore[union-attr]
        outcome.plugins = [{"ref": r.ref, "repository": r.repository, "digest": r.digest} for r in resolved]
        await asyncio.shield(
            self.db.execute("UPDATE assembly_jobs SET plugins = ? WHERE id = ?", (json.dumps(outcome.plugins), row["id"]))
        )

        source_repo, cap = row["source_repo"], self.settings.package_cap
        try:
            loaded = await read_package(self.registry, source_repo, row["source_digest"], cap)
        except PackageError as exc:
            raise AssemblyError(f"source package: {exc.reason}", detail=exc.detail) from None
        if loaded.package.config_media_type != mt.ALGORITHM_CONFIG:
            raise AssemblyError(
                f"source package: config media type is {loaded.package.config_media_type}, "
                f"not an algorithm descriptor ({mt.ALGORITHM_CONFIG})"
            )
        try:
            _check_descriptor(loaded.package, "source package")
        except PackageError as exc:
            raise AssemblyError(exc.reason) from None
        declared = loaded.package.descriptor.get("platform") if isinstance(loaded.package.descriptor, dict) else None
        if not chain.spec.takes_platform(declared):
            outcome.status = "skipped"
            job_log.write(f"skipped: the package's platform {declared!r} is not one of the chain's "
                          f"platforms {chain.spec.platforms}")
            return
        package = loaded.package.copy()
        for i, plugin_ref in enumerate(resolved):
            package = await self._apply(plugin_ref, outcome.plugins[i], package, row, chain, job_log)

        package.artifact_type = mt.BUSINESS
        package.config_media_type = mt.ALGORITHM_CONFIG
        package.subject = loaded.descriptor
        package.annotations.update({
            ANNOTATION_CHAIN: chain.name,
            ANNOTATION_PLUGINS: ",".join(f"{r.repository}@{r.digest}" for r in resolved),
            ANNOTATION_SOURCE: loaded.digest,
            ANNOTATION_SOURCE_REPOSITORY: source_repo,
        })
        if self.policy is not None:
            # The same check a push gets (a frozen business tag refuses even algomint) —
            # unless the tag already holds exactly this result: re-assembling identical
            # content onto a frozen package is the no-op it would be anywhere else.
            try:
                await self.policy.check(PolicyRequest(SYSTEM, Action.PUSH, row["target_repo"], row["target_tag"]))
            except RegistryError:
                if not await self._holds(row["target_repo"], row["target_tag"], package):
                    raise
        try:
            result = await write_package(self.registry, row["target_repo"], row["target_tag"], package, cap=cap,
                                         source_repo=source_repo)
        except PackageError as exc:
            raise AssemblyError(f"business package: {exc.reason}", detail=exc.detail) from None
        # Referrers are listed per repository: record the business package under the
        # generic repository too, so /v2/<generic>/referrers/<digest> lists it.
        await self.registry.referrers.record(source_repo, result.digest, result.size,
                                             parse_manifest(result.manifest, mt.OCI_MANIFEST))
        outcome.digest, outcome.written = result.digest, result.written

    async def _holds(self, repo: str, tag: str, package: Package) -> bool:
        digest = sha256_digest(build_manifest(package))
        try:
            return (await self.registry.stat_manifest(repo, tag)).digest == digest
        except RegistryError:
            return False

    async def _check_owner(self, chain: Chain, row: Any, plugins: list[ResolvedPlugin]) -> None:
        """The chain reads with its owner's rights of now: a revoked grant stops it here."""
        owner = chain.owner
        if owner is None:
            raise AssemblyError(f"chain {chain.name} has no recorded owner; whoever may read its sources must "
                                "save it again (PUT /api/v1/chains/{name}) before it runs")
        if self.policy is None:
            return
        reads = [(row["source_repo"], row["source_digest"])] + [(p.repository, p.digest) for p in plugins]
        for repository, digest in reads:
            try:
                await self.policy.check(PolicyRequest(owner, Action.PULL, repository, digest))
            except RegistryError as exc:
                raise AssemblyError(
                    f"chain owner {owner.name} may not pull {repository} ({exc.code}: {exc.message}); "
                    "nothing was assembled",
                    detail={"owner": owner.name, "repository": repository},
                ) from None

    async def _apply(self, resolved: ResolvedPlugin, record: dict[str, Any], package: Package, row: Any,
                     chain: Chain, job_log: JobLog) -> Package:
        ref = f"{resolved.repository}@{resolved.digest}"
        started = time.perf_counter()
        try:
            artifact, plugin = await self.plugins.setup(resolved, self.env)
            record.update(name=artifact.config.name, version=artifact.config.version, kind=artifact.config.kind)
            context = PluginContext(
                chain=chain.name,
                params=chain.spec.params,
                system=chain.name,
                algorithm=self.algorithm_of(row["source_repo"]),
                version=row["source_tag"],
                source_repository=row["source_repo"],
                source_digest=row["source_digest"],
                plugin=ref,
                cap=self.settings.package_cap,
                log=job_log.prefixed(artifact.config.name),
            )
            models = copy.deepcopy(_model_fields(package))  # before: a plugin may edit its input in place
            result = await plugin.apply(package, context)
            if not isinstance(result, Package):
                raise PluginError(f"returned {type(result).__name__}, not a package")
            result.check(self.settings.package_cap)
            _check_descriptor(result, "result")
            _check_models_kept(models, result)
        except (PluginError, PackageError) as exc:
            raise AssemblyError(f"plugin {resolved.ref}: {exc.reason}", resolved.ref, exc.detail) from None
        finally:
            record["ms"] = round((time.perf_counter() - started) * 1000, 2)
        job_log.write(f"plugin {resolved.ref} ({ref}) done in {record['ms']:.0f} ms")
        return result


def _model_fields(package: Package) -> tuple[Any, Any]:
    """What decides which files a full build encrypts: package ``models`` and each runtime
    image's ``ref`` and ``models``."""
    doc = package.descriptor if isinstance(package.descriptor, dict) else {}
    runtime = doc.get("runtime") if isinstance(doc.get("runtime"), dict) else {}
    images = runtime.get("images") if isinstance(runtime.get("images"), list) else []
    return doc.get("models"), [(i.get("ref"), i.get("models"), i.get("platforms")) if isinstance(i, dict) else i
                               for i in images]


def _check_models_kept(was: tuple[Any, Any], after: Package) -> None:
    """Plugins may not change which files are models or which images run: encryption
    is decided by the generic package's owner, not from inside the chain."""
    now = _model_fields(after)
    if was[0] != now[0]:
        raise PackageError("changed the descriptor's models; plugins may not change which files are models")
    if was[1] != now[1]:
        raise PackageError("changed the descriptor's runtime.images (refs, models or platforms); plugins may not change "
                           "which runtime images run or which of their files are models")


def _check_descriptor(package: Package, what: str) -> None:
    try:
        AlgorithmDescriptor.parse(package.descriptor)
    except DescriptorError as exc:
        raise PackageError(f"{what}: algorithm descriptor invalid: {exc}") from None
