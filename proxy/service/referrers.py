"""The referrers index (distribution-spec §Listing Referrers), kept by algomint itself.

Every manifest with a ``subject`` that passes through algomint is recorded here, so the
referrers API works the same on every backend, including registries without one
(distribution 2.8). Referrers pushed straight to the backend by clients that use the
spec's fallback tag schema (``<alg>-<hex>`` tags holding an index) are merged in."""

from __future__ import annotations

import json
from typing import Any

from ..backend import Backend
from ..meta import Database
from ..oci import mediatypes as mt
from ..oci.errors import Errors, RegistryError
from ..oci.manifest import Descriptor, ParsedManifest, parse_manifest

__all__ = ["ReferrersIndex", "SCHEMA", "fallback_tag", "referrers_document"]

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS referrers (
        repo TEXT NOT NULL,
        subject TEXT NOT NULL,
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        artifact_type TEXT,
        annotations TEXT,
        PRIMARY KEY (repo, subject, digest)
    )""",
    "CREATE INDEX IF NOT EXISTS referrers_by_digest ON referrers (repo, digest)",
    # A filtered page reads only its rows.
    "CREATE INDEX IF NOT EXISTS referrers_by_type ON referrers (repo, subject, artifact_type, digest)",
]


def fallback_tag(digest: str) -> str:
    """The referrers tag schema: ``sha256:abc`` -> ``sha256-abc``."""
    return digest.replace(":", "-", 1)[:128]


class ReferrersIndex:
    def __init__(self, db: Database, backend: Backend) -> None:
        self.db = db
        self.backend = backend

    async def record(self, repo: str, digest: str, size: int, manifest: ParsedManifest) -> None:
        if manifest.subject is None:
            return
        await self.db.execute(
            "INSERT INTO referrers (repo, subject, digest, media_type, size, artifact_type, annotations)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repo, subject, digest) DO UPDATE SET"
            " media_type = excluded.media_type, size = excluded.size, artifact_type = excluded.artifact_type,"
            " annotations = excluded.annotations",
            (
                repo,
                manifest.subject.digest,
                digest,
                manifest.media_type,
                size,
                manifest.artifact_type,
                json.dumps(manifest.annotations, sort_keys=True) if manifest.annotations else None,
            ),
        )

    async def forget(self, repo: str, digest: str) -> None:
        await self.db.execute("DELETE FROM referrers WHERE repo = ? AND digest = ?", (repo, digest))

    async def list(
        self, repo: str, subject: str, artifact_type: str | None = None,
        n: int | None = None, last: str | None = None,
    ) -> tuple[list[Descriptor], bool]:
        """Referrers of ``subject`` by digest after ``last``, at most ``n``, and whether
        more follow. Filter and page are in the query (an index covers both); the
        fallback tag's index, one manifest, is merged in."""
        where = "repo = ? AND subject = ? AND digest > ?"
        params: list[object] = [repo, subject, last or ""]
        if artifact_type is not None:
            where += " AND artifact_type = ?"
            params.append(artifact_type)
        limit = ""
        if n is not None:
            limit = " LIMIT ?"
            params.append(n + 1)
        rows = await self.db.fetchall(
            "SELECT digest, media_type, size, artifact_type, annotations FROM referrers"
            f" WHERE {where} ORDER BY digest{limit}",
            params,
        )
        found: dict[str, Descriptor] = {
            row["digest"]: Descriptor(
                row["media_type"],
                row["digest"],
                row["size"],
                row["artifact_type"],
                json.loads(row["annotations"]) if row["annotations"] else None,
            )
            for row in rows
        }
        for descriptor in await self._fallback(repo, subject):
            if (last is None or descriptor.digest > last) and (
                artifact_type is None or descriptor.artifact_type == artifact_type
            ):
                found.setdefault(descriptor.digest, descriptor)
        result = sorted(found.values(), key=lambda d: d.digest)
        if n is None or len(result) <= n:
            return result, False
        return result[:n], True

    async def _fallback(self, repo: str, subject: str) -> list[Descriptor]:
        try:
            data = await self.backend.get_manifest(repo, fallback_tag(subject))
            index = parse_manifest(data.data, data.media_type)
        except RegistryError as exc:
            if exc.error is Errors.UNAVAILABLE:
                raise
            return []  # no fallback tag, or not an index: nothing to merge
        return list(index.manifests) if index.is_index else []


def referrers_document(descriptors: list[Descriptor]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [d.to_json() for d in descriptors],
    }
