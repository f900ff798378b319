"""Online garbage collection of the embedded (filesystem) storage.

Deleting a blob or a manifest through the API only unlinks it from its repository; the
content stays under ``blobs/``. A collection reclaims it while pushes go on, in three
steps:

1. **Mark.** Per repository, the live manifests are the closure of its roots under "an
   index needs its children" and "a referrer of a live subject is live". Roots: tagged
   manifests, the extra roots (``Roots``: every digest full builds froze, see below),
   manifests linked less than ``grace_period`` ago, every digest an in-flight write
   pinned (``fence.py``), and, unless ``delete_untagged``, every linked manifest. A
   manifest that can't be read or parsed is kept. The live blobs are the configs and
   layers of live manifests, and every extra root: a frozen digest is live whether or not
   a live manifest names it. A full build freezes its manifests and everything they and
   the source runtime images reference; a layer made on every pull from a source image's
   layer needs that layer though no stored manifest of its own image names it, and the
   source image's tag may be gone.
2. **Unlink.** Layer links to blobs no live manifest of the repository needs, and (with
   ``delete_untagged``) revisions of manifests that are not live, are removed when older
   than the grace period. Each removal re-checks the link's age and the pins on the event
   loop, then unlinks with no ``await`` in between.
3. **Reclaim.** Content files that no repository links any more are renamed into
   ``_gc/`` (quarantine), every repository is checked again for a link made meanwhile
   (an upload or mount of the same content links before it looks for the content), and
   each file is deleted, or put back if it was linked or pinned in between. Content an
   extra root names is never reclaimed. A crash mid-way leaves files in ``_gc/``; the
   next collection puts them back first.

A dry run does steps 1–3 without changing anything and reports what would go.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from ..backend.filesystem import FilesystemBackend
from ..oci.errors import RegistryError
from ..oci.manifest import parse_manifest
from .registry import RegistryService

__all__ = ["Collector", "GcCounts", "Roots"]

log = logging.getLogger(__name__)

# Extra roots per repository, asked at each run (digests frozen by full builds): a manifest
# among them is a root of the mark, a blob a live blob (its layer link is kept), and the
# content of any is never reclaimed, named by a live manifest or not.
Roots = Callable[[], Awaitable[dict[str, set[str]]]]

# Content files quarantined and re-checked together: one walk of every link per batch.
_BATCH = 4096
# Removals between two turns of the event loop: each one is atomic on its own.
_YIELD_EVERY = 32


@dataclass
class GcCounts:
    """What a collection found and did (a dry run: what it would do)."""

    repositories: int = 0
    manifests_scanned: int = 0
    blobs_scanned: int = 0
    layer_links_removed: int = 0
    manifests_removed: int = 0
    blobs_removed: int = 0
    bytes_reclaimed: int = 0
    phase: str = "mark"

    def to_json(self) -> dict[str, int | str]:
        return dict(self.__dict__)


@dataclass
class _Repo:
    name: str
    path: Path
    tags: dict[str, str] = field(default_factory=dict)  # tag -> digest
    revisions: dict[str, float] = field(default_factory=dict)  # digest -> link mtime
    layers: dict[str, float] = field(default_factory=dict)  # digest -> link mtime


@dataclass
class _Refs:
    children: list[str]
    blobs: list[str]
    subject: str | None


def _links(directory: Path) -> dict[str, float]:
    """``<algo>/<hex>`` link files under ``directory`` as ``{"algo:hex": mtime}``."""
    found: dict[str, float] = {}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        with os.scandir(directory) as algorithms:
            for algorithm in algorithms:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    with os.scandir(algorithm.path) as entries:
                        for entry in entries:
                            with contextlib.suppress(FileNotFoundError):
                                found[f"{algorithm.name}:{entry.name}"] = entry.stat().st_mtime
    return found


class Collector:
    def __init__(
        self,
        backend: FilesystemBackend,
        service: RegistryService,
        *,
        grace_period: float,
        delete_untagged: bool,
        roots: Roots | None = None,
    ) -> None:
        self.backend = backend
        self.service = service
        self.grace_period = grace_period
        self.delete_untagged = delete_untagged
        self.roots = roots
        self._quarantine = backend.root / "_gc"

    # -- disk walks (worker threads) ---------------------------------------------
    def _scan_sync(self) -> list[_Repo]:
        repos = []
        base = self.backend.root / "repositories"
        for path in self.backend._walk_repositories():
            repo = _Repo("/".join(path.relative_to(base).parts), path)
            repo.tags = dict(self.backend._read_tags(path / "_manifests" / "tags"))
            repo.revisions = _links(path / "_manifests" / "revisions")
            repo.layers = _links(path / "_layers")
            if repo.tags or repo.revisions or repo.layers:
                repos.append(repo)
        return repos

    def _content_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return self.backend.root / "blobs" / algorithm / encoded[:2] / encoded

    def _parse_sync(self, repo: _Repo) -> dict[str, _Refs | None]:
        """What each linked manifest of ``repo`` names; ``None`` when it can't be read."""
        parsed: dict[str, _Refs | None] = {}
        for digest in repo.revisions:
            algorithm, _, encoded = digest.partition(":")
            try:
                sidecar = json.loads((repo.path / "_manifests" / "revisions" / algorithm / encoded).read_bytes())
                manifest = parse_manifest(self._content_path(digest).read_bytes(), sidecar["mediaType"])
            except (OSError, ValueError, KeyError, TypeError, RegistryError):
                parsed[digest] = None
                continue
            parsed[digest] = _Refs([d.digest for d in manifest.manifests], [d.digest for d in manifest.blobs],
                                   manifest.subject.digest if manifest.subject is not None else None)
        return parsed

    def _contents_sync(self) -> list[tuple[str, Path, int, float]]:
        """Every content file: digest, path, size, mtime."""
        found = []
        blobs = self.backend.root / "blobs"
        with contextlib.suppress(FileNotFoundError):
            for algorithm in os.scandir(blobs):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    for prefix in os.scandir(algorithm.path):
                        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                            for entry in os.scandir(prefix.path):
                                with contextlib.suppress(FileNotFoundError):
                                    st = entry.stat()
                                    found.append((f"{algorithm.name}:{entry.name}", Path(entry.path), st.st_size,
                                                  st.st_mtime))
        return found

    def _linked_sync(self) -> set[str]:
        """Every digest some repository links now (layer or revision)."""
        linked: set[str] = set()
        for path in self.backend._walk_repositories():
            linked.update(_links(path / "_layers"))
            linked.update(_links(path / "_manifests" / "revisions"))
        return linked

    def _restore_quarantine_sync(self) -> int:
        restored = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._quarantine):
                algorithm, _, encoded = entry.name.partition("-")
                target = self._content_path(f"{algorithm}:{encoded}")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(entry.path, target)
                restored += 1
        return restored

    # -- the collection --------------------------------------------------------------
    async def run(self, *, dry_run: bool, counts: GcCounts | None = None) -> GcCounts:
        counts = counts or GcCounts()
        with self.service.fence.collecting() as pinned:
            restored = await asyncio.to_thread(self._restore_quarantine_sync)
            if restored:
                log.warning("garbage collection put back quarantined content", extra={"count": restored})
            now = time.time()
            extra = await self.roots() if self.roots is not None else {}
            repos = await asyncio.to_thread(self._scan_sync)
            counts.repositories = len(repos)
            doomed_layers: list[tuple[_Repo, str]] = []
            doomed_revisions: list[tuple[_Repo, str]] = []
            for repo in repos:
                live, live_blobs = await self._mark(repo, extra.get(repo.name, set()), pinned, now)
                counts.manifests_scanned += len(repo.revisions)
                doomed_layers += [(repo, d) for d, mtime in repo.layers.items()
                                  if d not in live_blobs and d not in pinned and now - mtime > self.grace_period]
                if self.delete_untagged:
                    doomed_revisions += [(repo, d) for d, mtime in repo.revisions.items()
                                         if d not in live and d not in pinned and now - mtime > self.grace_period]
            counts.phase = "unlink"
            removed = set()
            for n, (repo, digest) in enumerate(doomed_layers):
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let requests run between (atomic) removals
                if dry_run or self._unlink_link(repo.path / "_layers", digest, pinned):
                    counts.layer_links_removed += 1
                    removed.add((repo.name, "l", digest))
            for n, (repo, digest) in enumerate(doomed_revisions):
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                if dry_run or self._unlink_link(repo.path / "_manifests" / "revisions", digest, pinned):
                    counts.manifests_removed += 1
                    removed.add((repo.name, "r", digest))
                    if not dry_run:
                        await self._forget(repo.name, digest)
            await asyncio.sleep(0)
            counts.phase = "reclaim"
            if dry_run:
                # What would stay linked once the links above were gone.
                linked = {d for r in repos for d in r.layers if (r.name, "l", d) not in removed}
                linked |= {d for r in repos for d in r.revisions if (r.name, "r", d) not in removed}
            else:
                linked = await asyncio.to_thread(self._linked_sync)
            contents = await asyncio.to_thread(self._contents_sync)
            counts.blobs_scanned = len(contents)
            kept = set().union(*extra.values())
            candidates = [(d, p, size) for d, p, size, mtime in contents
                          if d not in linked and d not in kept and d not in pinned and now - mtime > self.grace_period]
            if dry_run:
                counts.blobs_removed = len(candidates)
                counts.bytes_reclaimed = sum(size for _, _, size in candidates)
            else:
                for start in range(0, len(candidates), _BATCH):
                    await self._reclaim(candidates[start : start + _BATCH], pinned, counts)
            counts.phase = "done"
        return counts

    async def _mark(self, repo: _Repo, frozen: set[str], pinned: set[str], now: float) -> tuple[set[str], set[str]]:
        """The live manifests and blobs of one repository; every ``frozen`` digest is both
        a root and a live blob (only its kind of link, revision or layer, is looked at)."""
        parsed = await asyncio.to_thread(self._parse_sync, repo)
        referrers: dict[str, list[str]] = {}
        for digest, entry in parsed.items():
            if entry is not None and entry.subject is not None:
                referrers.setdefault(entry.subject, []).append(digest)
        roots = set(repo.tags.values()) | frozen | (pinned & repo.revisions.keys())
        roots |= {d for d, mtime in repo.revisions.items() if now - mtime <= self.grace_period}
        roots |= {d for d, entry in parsed.items() if entry is None}  # unreadable: never guess
        if not self.delete_untagged:
            roots |= repo.revisions.keys()
        live: set[str] = set()
        live_blobs = set(frozen)
        pending = list(roots)
        while pending:
            digest = pending.pop()
            if digest in live:
                continue
            live.add(digest)
            entry = parsed.get(digest)
            if entry is not None:
                pending += entry.children
                live_blobs.update(entry.blobs)
            pending += referrers.get(digest, ())
        return live, live_blobs

    def _unlink_link(self, directory: Path, digest: str, pinned: set[str]) -> bool:
        """On the event loop: re-check, then unlink with no ``await`` in between."""
        algorithm, _, encoded = digest.partition(":")
        link = directory / algorithm / encoded
        try:
            if digest in pinned or time.time() - link.stat().st_mtime <= self.grace_period:
                return False  # pinned or re-linked since the scan
            link.unlink()
        except FileNotFoundError:
            return False
        return True

    async def _forget(self, repo: str, digest: str) -> None:
        with contextlib.suppress(Exception):  # a stale referrers row only lists a gone manifest
            await self.service.forget_manifest(repo, digest)

    async def _reclaim(self, batch: list[tuple[str, Path, int]], pinned: set[str], counts: GcCounts) -> None:
        """Quarantine, re-check, delete. A link made after a file's quarantine finds no
        content and brings its own (uploads and mounts link first, then look), so only
        links made before it matter, and the walk after the quarantine sees them all."""
        self._quarantine.mkdir(exist_ok=True)
        held: list[tuple[str, Path, Path, int]] = []
        try:
            for n, (digest, path, size) in enumerate(batch):
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                if digest in pinned:
                    continue
                hold = self._quarantine / digest.replace(":", "-", 1)
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, hold)
                    held.append((digest, path, hold, size))
            linked = await asyncio.to_thread(self._linked_sync)
            for n, (digest, path, hold, size) in enumerate(held):
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                # No await from here to the unlink: a write pinning now is seen.
                if digest in linked or digest in pinned:
                    os.replace(hold, path)  # identical bytes if the content was stored again meanwhile
                    continue
                os.unlink(hold)
                counts.blobs_removed += 1
                counts.bytes_reclaimed += size
        except BaseException:
            for _, path, hold, _ in held:  # stopped mid-way: put back what is still held
                with contextlib.suppress(OSError):
                    os.replace(hold, path)
            raise
