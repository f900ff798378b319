"""Durable full-build records, who asked for them, and frozen tags and content
(through ``proxy.meta.Database``). A running build is leased by the replica running it
(``proxy.cluster.leases``, kind ``full_build``)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Sequence

from proxy.cluster.leases import LeaseLost, Leases
from proxy.meta import Database
from proxy.meta.db import Transaction
from proxy.service.policy import SYSTEM, Principal

__all__ = ["SCHEMA", "BuildRecord", "BuildStore", "Frozen", "LayerProgress", "STATES", "ACTIVE"]

LEASE = "full_build"
_SEALED_COLUMNS = ("digest", "size", "source_repository", "source_digest", "source_size", "key_id", "models",
                   "chunk_size", "tar_bytes", "max_entries", "max_header_bytes")
STATES = ("queued", "running", "succeeded", "failed")
ACTIVE = ("queued", "running")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS full_builds (
        id TEXT PRIMARY KEY,
        package TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        license TEXT NOT NULL,
        source_digest TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER NOT NULL DEFAULT 0,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        error TEXT,
        warnings TEXT NOT NULL DEFAULT '[]'
    )""",
    "CREATE INDEX IF NOT EXISTS full_builds_state ON full_builds (state, created_at)",
    "CREATE INDEX IF NOT EXISTS full_builds_package ON full_builds (repository, tag, license, source_digest)",
    # Listings, newest first, with or without a filter: a page reads a page.
    "CREATE INDEX IF NOT EXISTS full_builds_newest ON full_builds (created_at, id)",
    "CREATE INDEX IF NOT EXISTS full_builds_by_package ON full_builds (package, created_at, id)",
    "CREATE INDEX IF NOT EXISTS full_builds_by_state ON full_builds (state, created_at, id)",
    """CREATE TABLE IF NOT EXISTS full_build_layers (
        build_id TEXT NOT NULL REFERENCES full_builds(id) ON DELETE CASCADE,
        image TEXT NOT NULL,
        position INTEGER NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        bytes_done INTEGER NOT NULL DEFAULT 0,
        result_digest TEXT,
        diff_id TEXT,
        encrypted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (build_id, image, position)
    )""",
    """CREATE TABLE IF NOT EXISTS frozen_tags (
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        build_id TEXT NOT NULL,
        package TEXT NOT NULL,
        PRIMARY KEY (repository, tag)
    )""",
    "CREATE INDEX IF NOT EXISTS frozen_tags_digest ON frozen_tags (repository, digest)",
    # Every digest (child manifest, config, layer) a frozen manifest references, per
    # repository: deleting any of them would break the frozen package.
    """CREATE TABLE IF NOT EXISTS frozen_blobs (
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        tag TEXT NOT NULL,
        build_id TEXT NOT NULL,
        package TEXT NOT NULL,
        PRIMARY KEY (repository, digest)
    )""",
    # Which build is creating a licensed tag: two builds never both write one.
    """CREATE TABLE IF NOT EXISTS licensed_claims (
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        build_id TEXT NOT NULL,
        PRIMARY KEY (repository, tag)
    )""",
    # Each licensed image manifest (one platform) a succeeded build made, by what it was
    # made from: a later build with the same source, license key and models reuses it.
    """CREATE TABLE IF NOT EXISTS licensed_platforms (
        repository TEXT NOT NULL,
        source_digest TEXT NOT NULL,
        license_key TEXT NOT NULL,
        models TEXT NOT NULL,
        digest TEXT NOT NULL,
        platform TEXT NOT NULL,
        key_id TEXT,
        encrypted INTEGER NOT NULL,
        build_id TEXT NOT NULL,
        PRIMARY KEY (repository, source_digest, license_key, models)
    )""",
    "CREATE INDEX IF NOT EXISTS licensed_platforms_digest ON licensed_platforms (repository, digest)",
    # The tags an active (queued or running) build is made from: the business tag and the
    # same version of its generic source. Pushes to them are refused while the build is
    # active, and assembly jobs for the business tag wait for it.
    """CREATE TABLE IF NOT EXISTS full_build_holds (
        build_id TEXT NOT NULL REFERENCES full_builds(id) ON DELETE CASCADE,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        PRIMARY KEY (build_id, repository, tag)
    )""",
    "CREATE INDEX IF NOT EXISTS full_build_holds_tag ON full_build_holds (repository, tag)",
    # Whose rights a build reads and writes with (a build without a row predates this
    # table, when only registry-wide admins could start builds).
    """CREATE TABLE IF NOT EXISTS full_build_requesters (
        build_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL
    )""",
    # The synthesised package layer of each runnable image (``runnable.py``): never
    # stored, laid out again from the licensed thin manifest it was made from.
    """CREATE TABLE IF NOT EXISTS runnable_layers (
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        size BIGINT NOT NULL,
        package_digest TEXT NOT NULL,
        build_id TEXT NOT NULL,
        PRIMARY KEY (repository, digest)
    )""",
    # A licensed image's uncompressed sealed layer (``sealed.py``): never stored, made
    # again from its source layer on each read. A business repository the image is
    # linked into has a row of its own naming the same source.
    """CREATE TABLE IF NOT EXISTS sealed_layers (
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        size BIGINT NOT NULL,
        source_repository TEXT NOT NULL,
        source_digest TEXT NOT NULL,
        source_size BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        models TEXT NOT NULL,
        chunk_size INTEGER NOT NULL,
        tar_bytes BIGINT NOT NULL,
        max_entries BIGINT NOT NULL,
        max_header_bytes BIGINT NOT NULL,
        build_id TEXT NOT NULL,
        PRIMARY KEY (repository, digest)
    )""",
    "CREATE INDEX IF NOT EXISTS sealed_layers_build ON sealed_layers (build_id)",
    # A runnable image's manifests (or index) and configs (KB, JSON), by digest, and its tags.
    """CREATE TABLE IF NOT EXISTS runnable_objects (
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (repository, digest)
    )""",
    """CREATE TABLE IF NOT EXISTS runnable_tags (
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (repository, tag)
    )""",
]


@dataclass
class LayerProgress:
    image: str
    position: int
    digest: str
    size: int
    state: str = "pending"  # pending | scanning | rewriting | rewritten | reused | failed
    bytes_done: int = 0
    result_digest: str | None = None
    diff_id: str | None = None
    encrypted: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image, "position": self.position, "digest": self.digest, "size": self.size,
            "state": self.state, "bytes_done": self.bytes_done, "result_digest": self.result_digest,
            "diff_id": self.diff_id, "encrypted_files": self.encrypted,
        }


@dataclass
class BuildRecord:
    id: str
    package: str
    repository: str
    tag: str
    license: str
    source_digest: str
    state: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    layers: list[LayerProgress] = field(default_factory=list)

    def to_json(self, *, layers: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "package": self.package, "license": self.license, "source_digest": self.source_digest,
            "state": self.state, "created_at": self.created_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "attempts": self.attempts, "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done, "result": self.result, "error": self.error, "warnings": self.warnings,
        }
        if layers:
            out["layers"] = [layer.to_json() for layer in self.layers]
        return out


@dataclass(frozen=True)
class Frozen:
    repository: str
    tag: str
    digest: str
    build_id: str
    package: str


def _record(row: Any) -> BuildRecord:
    return BuildRecord(
        id=row["id"], package=row["package"], repository=row["repository"], tag=row["tag"], license=row["license"],
        source_digest=row["source_digest"], state=row["state"], created_at=row["created_at"],
        started_at=row["started_at"], finished_at=row["finished_at"], attempts=row["attempts"],
        bytes_total=row["bytes_total"], bytes_done=row["bytes_done"],
        result=json.loads(row["result"]) if row["result"] else None, error=row["error"],
        warnings=json.loads(row["warnings"] or "[]"),
    )


def _platform_rows(build_id: str, result: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Ledger rows for the licensed platform manifests of a build's result."""
    rows = []
    for image in result.get("images") or []:
        repository = str(image.get("licensed", "")).rsplit(":", 1)[0]
        license_key = json.dumps(image.get("license_key"), sort_keys=True, separators=(",", ":"))
        models = json.dumps(list(image.get("models") or []), separators=(",", ":"))
        for one in image.get("platforms") or []:
            rows.append((repository, one["source_digest"], license_key, models, one["digest"], one["platform"],
                         one.get("key_id"), int(one.get("encrypted_files") or 0), build_id))
    return rows


class BuildStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def migrate(self) -> None:
        await self.db.migrate("full_builds", SCHEMA)

    async def pending_assemblies(self, repository: str, tag: str) -> list[tuple[int, str]]:
        """Assembly jobs (id, status) still queued or running for the business tag ``repository:tag``."""
        rows = await self.db.fetchall(
            "SELECT id, status FROM assembly_jobs WHERE target_repo = ? AND target_tag = ?"
            " AND status IN ('queued', 'running') ORDER BY id", (repository, tag))
        return [(int(r["id"]), str(r["status"])) for r in rows]

    async def create(self, package: str, repository: str, tag: str, license: str, source_digest: str,
                     requester: Principal, holds: Sequence[tuple[str, str]] = ()
                     ) -> BuildRecord | list[tuple[int, str]]:
        """Queue a build holding ``holds`` (repository, tag); with holds, returns the pending
        assembly jobs of the business tag instead when there are any. Checked and written in one
        transaction, so no job queued before the build is ever overtaken by it."""
        record = BuildRecord(uuid.uuid4().hex, package, repository, tag, license, source_digest, "queued", time.time())
        async with self.db.transaction() as tx:
            if holds:
                pending = await tx.fetchall(
                    "SELECT id, status FROM assembly_jobs WHERE target_repo = ? AND target_tag = ?"
                    " AND status IN ('queued', 'running') ORDER BY id", (repository, tag))
                if pending:
                    return [(int(r["id"]), str(r["status"])) for r in pending]
            await tx.execute(
                "INSERT INTO full_builds (id, package, repository, tag, license, source_digest, state, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, package, repository, tag, license, source_digest, record.state, record.created_at),
            )
            await tx.execute("INSERT INTO full_build_requesters (build_id, name, kind) VALUES (?, ?, ?)",
                             (record.id, requester.name, requester.kind))
            await tx.executemany("INSERT INTO full_build_holds (build_id, repository, tag) VALUES (?, ?, ?) "
                                 "ON CONFLICT DO NOTHING",
                                 [(record.id, repo, held) for repo, held in holds])
        return record

    async def claim_tag(self, repository: str, tag: str, build_id: str) -> str | None:
        """Claim the licensed tag ``repository:tag`` for ``build_id``; returns the build
        holding it instead (queued, running or succeeded), or None once it is ours. A claim
        of a build that failed is taken over."""
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT c.build_id, b.state FROM licensed_claims c LEFT JOIN full_builds b ON b.id = c.build_id"
                " WHERE c.repository = ? AND c.tag = ?", (repository, tag))
            if row is not None and row["build_id"] != build_id and row["state"] in (*ACTIVE, "succeeded"):
                return str(row["build_id"])
            await tx.execute("INSERT INTO licensed_claims (repository, tag, build_id) VALUES (?, ?, ?)"
                             " ON CONFLICT (repository, tag) DO UPDATE SET build_id = excluded.build_id",
                             (repository, tag, build_id))
        return None

    async def requester(self, build_id: str) -> Principal:
        """Who asked for the build; builds from before requesters were recorded were
        admin-only, and run as the system."""
        row = await self.db.fetchone("SELECT name, kind FROM full_build_requesters WHERE build_id = ?", (build_id,))
        return Principal(row["name"], row["kind"]) if row else SYSTEM

    async def find_reusable(self, repository: str, tag: str, license: str, source_digest: str) -> BuildRecord | None:
        """An active or succeeded build of exactly this package content and license."""
        row = await self.db.fetchone(
            "SELECT * FROM full_builds WHERE repository = ? AND tag = ? AND license = ? AND source_digest = ? "
            "AND state IN ('queued', 'running', 'succeeded') ORDER BY created_at DESC LIMIT 1",
            (repository, tag, license, source_digest),
        )
        return _record(row) if row else None

    async def get(self, build_id: str, *, layers: bool = True) -> BuildRecord | None:
        row = await self.db.fetchone("SELECT * FROM full_builds WHERE id = ?", (build_id,))
        if row is None:
            return None
        record = _record(row)
        if layers:
            rows = await self.db.fetchall(
                "SELECT * FROM full_build_layers WHERE build_id = ? ORDER BY image, position", (build_id,)
            )
            record.layers = [
                LayerProgress(r["image"], r["position"], r["digest"], r["size"], r["state"], r["bytes_done"],
                              r["result_digest"], r["diff_id"], r["encrypted"])
                for r in rows
            ]
        return record

    async def list(self, limit: int, before: tuple[float, str] | None = None, *, package: str | None = None,
                   state: str | None = None, prefixes: Sequence[str] | None = None) -> list[BuildRecord]:
        """Newest first; ``before`` is the (created_at, id) of the last item already seen;
        ``prefixes``: only builds whose business repository starts with one of them."""
        where, params = [], []  # type: list[str], list[Any]
        if prefixes is not None:
            where.append("(" + (" OR ".join("substr(repository, 1, ?) = ?" for _ in prefixes) or "0") + ")")
            params += [v for p in prefixes for v in (len(p), p)]
        if before is not None:
            where.append("(created_at, id) < (?, ?)")  # a row value: the index seeks to it
            params += [before[0], before[1]]
        if package is not None:
            where.append("package = ?")
            params.append(package)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        sql = "SELECT * FROM full_builds" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self.db.fetchall(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit))
        return [_record(r) for r in rows]

    async def claim_next(self, leases: Leases) -> tuple[BuildRecord, str | None] | None:
        """The oldest build that is queued, or running without a live lease (its replica
        died or stopped), now leased to this replica; with the previous owner if any."""
        now = leases.now()
        find = ("SELECT * FROM full_builds b WHERE b.state = 'queued' OR (b.state = 'running' AND NOT "
                + leases.live(LEASE, "b.id") + ") ORDER BY b.created_at LIMIT 1")
        # A plain read first: an idle poll never queues on the store's write lock; the
        # decision is made again inside the transaction.
        if await self.db.fetchone(find, (now,)) is None:
            return None
        async with self.db.transaction() as tx:
            row = await tx.fetchone(find, (now,))
            if row is None:
                return None
            previous = await leases.claim(tx, LEASE, row["id"])
            if previous is False:
                return None  # another replica took it since the read
            await tx.execute(
                "UPDATE full_builds SET state = 'running', started_at = ?, attempts = attempts + 1, bytes_done = 0, "
                "error = NULL, warnings = '[]' WHERE id = ?",
                (now, row["id"]),
            )
            await tx.execute("DELETE FROM full_build_layers WHERE build_id = ?", (row["id"],))
        record = _record(row)
        record.state, record.started_at, record.attempts = "running", now, record.attempts + 1
        return record, previous  # type: ignore[return-value]

    async def hand_back(self, leases: Leases, build_id: str) -> None:
        """Shutdown stopped the build: queue it again and release it at once."""
        async with self.db.transaction() as tx:
            if await leases.release(tx, LEASE, build_id):
                await tx.execute("UPDATE full_builds SET state = 'queued' WHERE id = ? AND state = 'running'",
                                 (build_id,))

    async def set_layers(self, build_id: str, layers: Sequence[LayerProgress], bytes_total: int) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM full_build_layers WHERE build_id = ?", (build_id,))
            await tx.executemany(
                "INSERT INTO full_build_layers (build_id, image, position, digest, size, state) VALUES (?, ?, ?, ?, ?, ?)",
                [(build_id, l.image, l.position, l.digest, l.size, l.state) for l in layers],
            )
            await tx.execute("UPDATE full_builds SET bytes_total = ? WHERE id = ?", (bytes_total, build_id))

    async def save_progress(self, build_id: str, bytes_done: int, layers: Iterable[LayerProgress]) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("UPDATE full_builds SET bytes_done = ? WHERE id = ?", (bytes_done, build_id))
            await tx.executemany(
                "UPDATE full_build_layers SET state = ?, bytes_done = ?, result_digest = ?, diff_id = ?, encrypted = ? "
                "WHERE build_id = ? AND image = ? AND position = ?",
                [(l.state, l.bytes_done, l.result_digest, l.diff_id, l.encrypted, build_id, l.image, l.position)
                 for l in layers],
            )

    async def succeed(self, build_id: str, result: dict[str, Any], warnings: list[str], freezes: Iterable[Frozen],
                      content: Iterable[Frozen] = (), also: Callable[[Transaction], Awaitable[Any]] | None = None,
                      leases: Leases | None = None) -> None:
        """Record success and freeze the package's tags and the content they reference
        (``Frozen.digest`` of each ``content`` item) in one transaction; ``also`` writes more
        in it (the ``full.built`` event), so the event exists exactly when the success does.
        With ``leases``, only while this replica still holds the build (else LeaseLost)."""
        async with self.db.transaction() as tx:
            if leases is not None and not await leases.release(tx, LEASE, build_id):
                raise LeaseLost(f"full build {build_id}: lease taken over by another replica")
            await tx.execute(
                "UPDATE full_builds SET state = 'succeeded', finished_at = ?, result = ?, warnings = ?, "
                "bytes_done = bytes_total WHERE id = ?",
                (time.time(), json.dumps(result), json.dumps(warnings), build_id),
            )
            await tx.executemany(
                "INSERT INTO frozen_tags (repository, tag, digest, build_id, package) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (repository, tag) DO UPDATE SET digest = excluded.digest, build_id = excluded.build_id,"
                " package = excluded.package",
                [(f.repository, f.tag, f.digest, f.build_id, f.package) for f in freezes],
            )
            await tx.executemany(
                "INSERT INTO frozen_blobs (repository, digest, tag, build_id, package) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(f.repository, f.digest, f.tag, f.build_id, f.package) for f in content],
            )
            await tx.executemany(
                "INSERT INTO licensed_platforms (repository, source_digest, license_key, models, digest, platform,"
                " key_id, encrypted, build_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (repository, source_digest, license_key, models) DO NOTHING",
                _platform_rows(build_id, result),
            )
            if also is not None:
                await also(tx)

    async def fail(self, build_id: str, error: str, warnings: list[str], leases: Leases | None = None) -> None:
        async with self.db.transaction() as tx:
            if leases is not None and not await leases.release(tx, LEASE, build_id):
                raise LeaseLost(f"full build {build_id}: lease taken over by another replica")
            await tx.execute(
                "UPDATE full_builds SET state = 'failed', finished_at = ?, error = ?, warnings = ? WHERE id = ?",
                (time.time(), error[:4000], json.dumps(warnings), build_id),
            )
            # Nothing the failed build made is tagged; its sealed layers go with it.
            await tx.execute("DELETE FROM sealed_layers WHERE build_id = ?", (build_id,))

    async def licensed_platform(self, repository: str, source_digest: str, license_key: str,
                                models: str) -> dict[str, Any] | None:
        """The licensed manifest a succeeded build made from ``source_digest`` with this
        license key and these models (``platforms.ledger_key``), if any."""
        row = await self.db.fetchone(
            "SELECT digest, platform, key_id, encrypted, build_id FROM licensed_platforms WHERE repository = ?"
            " AND source_digest = ? AND license_key = ? AND models = ?", (repository, source_digest, license_key, models))
        return {k: row[k] for k in ("digest", "platform", "key_id", "encrypted", "build_id")} if row else None

    async def is_licensed(self, repository: str, digest: str) -> bool:
        """Whether ``digest`` is a licensed manifest a succeeded build made (the ledger)."""
        row = await self.db.fetchone("SELECT 1 AS found FROM licensed_platforms WHERE repository = ? AND digest = ?"
                                     " LIMIT 1", (repository, digest))
        return row is not None

    async def frozen_tag(self, repository: str, tag: str) -> Frozen | None:
        row = await self.db.fetchone("SELECT * FROM frozen_tags WHERE repository = ? AND tag = ?", (repository, tag))
        return Frozen(row["repository"], row["tag"], row["digest"], row["build_id"], row["package"]) if row else None

    async def held_tag(self, repository: str, tag: str) -> BuildRecord | None:
        """The active build made from ``repository:tag``, if any."""
        row = await self.db.fetchone(
            "SELECT b.* FROM full_build_holds h JOIN full_builds b ON b.id = h.build_id"
            " WHERE h.repository = ? AND h.tag = ? AND b.state IN ('queued', 'running') LIMIT 1", (repository, tag))
        return _record(row) if row else None

    async def frozen_digest(self, repository: str, digest: str) -> Frozen | None:
        row = await self.db.fetchone(
            "SELECT * FROM frozen_tags WHERE repository = ? AND digest = ? LIMIT 1", (repository, digest)
        )
        return Frozen(row["repository"], row["tag"], row["digest"], row["build_id"], row["package"]) if row else None

    async def frozen_content(self, repository: str, digest: str) -> Frozen | None:
        """The frozen tag whose manifest references ``digest`` in ``repository``, if any."""
        row = await self.db.fetchone(
            "SELECT * FROM frozen_blobs WHERE repository = ? AND digest = ?", (repository, digest)
        )
        return Frozen(row["repository"], row["tag"], row["digest"], row["build_id"], row["package"]) if row else None

    async def record_runnable(self, repository: str, digest: str, size: int, package_digest: str,
                              build_id: str) -> None:
        """The synthesised layer ``digest`` of ``repository``, made from the licensed thin
        manifest ``package_digest`` (the latest build that made it is its source)."""
        await self.db.execute(
            "INSERT INTO runnable_layers (repository, digest, size, package_digest, build_id) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (repository, digest) DO UPDATE SET size = excluded.size, "
            "package_digest = excluded.package_digest, build_id = excluded.build_id",
            (repository, digest, size, package_digest, build_id),
        )

    async def runnable_layer(self, repository: str, digest: str) -> dict[str, Any] | None:
        row = await self.db.fetchone(
            "SELECT size, package_digest, build_id FROM runnable_layers WHERE repository = ? AND digest = ?",
            (repository, digest))
        return {"size": row["size"], "package_digest": row["package_digest"], "build_id": row["build_id"]} if row else None

    async def record_sealed(self, repository: str, row: dict[str, Any], build_id: str) -> None:
        """A sealed layer of ``repository`` (``sealed.py``); its digest pins its content,
        so a row already there is the same layer."""
        columns = [*_SEALED_COLUMNS, "build_id"]
        await self.db.execute(
            f"INSERT INTO sealed_layers (repository, {', '.join(columns)}) VALUES (?, {', '.join('?' * len(columns))}) "
            "ON CONFLICT (repository, digest) DO NOTHING",
            (repository, *(row[c] for c in _SEALED_COLUMNS), build_id))

    async def link_sealed(self, from_repository: str, repository: str, digest: str, build_id: str) -> bool:
        """Serve ``from_repository``'s sealed layer ``digest`` from ``repository`` too;
        False when ``from_repository`` has no such layer."""
        row = await self.sealed_layer(from_repository, digest)
        if row is None:
            return False
        await self.record_sealed(repository, row, build_id)
        return True

    async def sealed_layer(self, repository: str, digest: str) -> dict[str, Any] | None:
        row = await self.db.fetchone(
            f"SELECT {', '.join(_SEALED_COLUMNS)} FROM sealed_layers WHERE repository = ? AND digest = ?",
            (repository, digest))
        return {c: row[c] for c in _SEALED_COLUMNS} if row else None

    async def hold_runnable(self, repository: str, digest: str, media_type: str, data: bytes) -> None:
        """A runnable image's manifest or config (UTF-8 JSON, as it was written)."""
        await self.db.execute(
            "INSERT INTO runnable_objects (repository, digest, media_type, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (repository, digest) DO NOTHING", (repository, digest, media_type, data.decode()))

    async def runnable_object(self, repository: str, digest: str) -> tuple[str, bytes] | None:
        row = await self.db.fetchone(
            "SELECT media_type, data FROM runnable_objects WHERE repository = ? AND digest = ?", (repository, digest))
        return (row["media_type"], row["data"].encode()) if row else None

    async def tag_runnable(self, repository: str, tag: str, digest: str) -> None:
        await self.db.execute(
            "INSERT INTO runnable_tags (repository, tag, digest) VALUES (?, ?, ?) "
            "ON CONFLICT (repository, tag) DO UPDATE SET digest = excluded.digest", (repository, tag, digest))

    async def runnable_tag(self, repository: str, tag: str) -> str | None:
        row = await self.db.fetchone(
            "SELECT digest FROM runnable_tags WHERE repository = ? AND tag = ?", (repository, tag))
        return str(row["digest"]) if row else None

    async def runnable_tags(self, repository: str) -> list[str]:
        """Sorted here, in code-point order as ``tags/list`` is, whatever the database collation."""
        rows = await self.db.fetchall("SELECT tag FROM runnable_tags WHERE repository = ?", (repository,))
        return sorted(str(row["tag"]) for row in rows)
