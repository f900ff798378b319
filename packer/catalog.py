"""The overview: per generic algorithm, its versions, whether each is frozen, the business
package every system got from it (digest, plugin versions, assembly state) and the full
builds of those packages (license, state, licensed images).

Everything here comes from the metadata store (assembly jobs, full builds, frozen tags) and
the registry's tag listings; nothing is computed twice. Callers filter by permission: the
``visible`` callback is asked about every repository before any of its content is shown."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from proxy.meta import Database
from proxy.oci.errors import Errors, RegistryError
from proxy.oci.manifest import parse_manifest
from proxy.service.registry import RegistryService

from .package import PackageError, read_blob

__all__ = ["Catalog", "Visible"]

Visible = Callable[[str], Awaitable[bool]]
_MAX_DESCRIPTOR = 1024 * 1024  # a descriptor is KB; anything larger is not shown


@dataclass(frozen=True)
class Catalog:
    db: Database
    registry: RegistryService
    generic_prefix: str

    async def algorithms(self, limit: int, after: str | None, visible: Visible) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` algorithms (by repository name, after ``after``) the caller may see
        something of; the second value is the cursor for the next page (None: no more)."""
        names, _ = await self.registry.catalog(None, None)
        repos = sorted(n for n in names if n.startswith(self.generic_prefix) and (after is None or n > after))
        items: list[dict[str, Any]] = []
        for i, repo in enumerate(repos):
            entry = await self._algorithm(repo, visible)
            if entry is not None:
                items.append(entry)
            if len(items) == limit:
                return items, (repo if i + 1 < len(repos) else None)
        return items, None

    async def _algorithm(self, repo: str, visible: Visible) -> dict[str, Any] | None:
        generic_visible = await visible(repo)
        business = await self._business(repo, visible)
        tags = await self._tags(repo) if generic_visible else sorted(business)
        versions = []
        for tag in tags:
            frozen = await self.db.fetchone("SELECT build_id FROM frozen_tags WHERE repository = ? AND tag = ?",
                                            (repo, tag))
            version: dict[str, Any] = {"version": tag, "frozen": frozen is not None,
                                       "frozen_by": frozen["build_id"] if frozen else None,
                                       "packages": business.get(tag, [])}
            if generic_visible:
                version.update(await self._facts(repo, tag))
            if generic_visible or version["packages"]:
                versions.append(version)
        if not generic_visible and not versions:
            return None
        return {"repository": repo, "algorithm": repo[len(self.generic_prefix):], "versions": versions}

    async def _tags(self, repo: str) -> list[str]:
        try:
            tags, _ = await self.registry.tags(repo, None, None)
        except RegistryError as exc:
            if exc.error is Errors.NAME_UNKNOWN:
                return []
            raise
        return sorted(t for t in tags if not t.startswith("sha256-"))  # referrers-fallback tags are bookkeeping

    async def _facts(self, repo: str, tag: str) -> dict[str, Any]:
        """The version's digest, and its platform and kind from its descriptor (one manifest
        read): ``embedded`` when it carries its own models and no runtime images."""
        try:
            item = await self.registry.get_manifest(repo, tag)
        except RegistryError as exc:
            if exc.error in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                return {"digest": None}  # deleted since the listing
            raise
        facts: dict[str, Any] = {"digest": item.digest}
        try:
            config = parse_manifest(item.data, item.media_type).config
            if config is None or config.size > _MAX_DESCRIPTOR:
                return facts
            descriptor = json.loads(await read_blob(self.registry, repo, config))
        except (RegistryError, PackageError, ValueError):
            return facts  # not an algorithm package, or its descriptor is gone: nothing more to show
        if not isinstance(descriptor, dict):
            return facts
        runtime = descriptor.get("runtime")
        images = runtime.get("images") if isinstance(runtime, dict) else None
        platform = descriptor.get("platform")
        return {**facts, "platform": platform if isinstance(platform, str) else None,
                "kind": "embedded" if not images and descriptor.get("models") else "server"}

    async def _business(self, repo: str, visible: Visible) -> dict[str, list[dict[str, Any]]]:
        """Version -> the business package of each system: its latest assembly and full builds."""
        rows = await self.db.fetchall(
            "SELECT * FROM assembly_jobs WHERE source_repo = ? ORDER BY id DESC", (repo,))
        latest: dict[tuple[str, str], Any] = {}
        done: dict[tuple[str, str], Any] = {}
        for row in rows:
            key = (row["target_repo"], row["target_tag"])
            latest.setdefault(key, row)
            if row["status"] == "succeeded":
                done.setdefault(key, row)
        allowed: dict[str, bool] = {}
        out: dict[str, list[dict[str, Any]]] = {}
        for (target, tag), row in sorted(latest.items()):
            if target not in allowed:
                allowed[target] = await visible(target)
            if not allowed[target]:
                continue
            good = done.get((target, tag))
            plugins = json.loads(good["plugins"]) if good is not None and good["plugins"] else []
            out.setdefault(row["source_tag"], []).append({
                "system": row["chain"],
                "repository": target,
                "tag": tag,
                "digest": good["result_digest"] if good is not None else None,
                "assembly": {"id": row["id"], "status": row["status"], "finished": row["finished"]},
                "plugins": [{"ref": p.get("ref"), "name": p.get("name"), "version": p.get("version"),
                             "digest": p.get("digest")} for p in plugins],
                "full_builds": await self._builds(target, tag, visible),
            })
        return out

    async def _builds(self, repo: str, tag: str, visible: Visible) -> list[dict[str, Any]]:
        """The latest build per license of one business package, with its licensed images."""
        rows = await self.db.fetchall(
            "SELECT id, license, state, result, error, finished_at FROM full_builds WHERE repository = ? AND tag = ?"
            " ORDER BY created_at DESC", (repo, tag))
        seen: set[str] = set()
        builds = []
        for row in rows:
            if row["license"] in seen:
                continue
            seen.add(row["license"])
            result = json.loads(row["result"]) if row["result"] else {}
            images = []
            for image in result.get("images", []):
                if await visible(image["licensed"].rsplit(":", 1)[0]):
                    images.append({"ref": image["ref"], "licensed": image["licensed"], "digest": image["digest"]})
            builds.append({"id": row["id"], "license": row["license"], "state": row["state"],
                           "tag": result.get("tag"), "digest": result.get("digest"), "images": images,
                           "error": row["error"], "finished": row["finished_at"]})
        return sorted(builds, key=lambda b: b["license"])
