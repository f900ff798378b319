"""Registry rules above the storage backend.

Manifest validation, Accept negotiation, the digest-addressed manifest cache, the
referrers index, pagination and the "manifest stored" event (made crash-safe by the
change journal) live here, so every backend behaves the same and the HTTP handlers only
parse and respond."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Callable, Coroutine, Protocol, Sequence

from ..backend import Backend, ManifestData, ManifestInfo
from ..oci.errors import Errors, RegistryError
from ..oci.manifest import Descriptor, ParsedManifest, accepts, parse_manifest
from ..oci.reference import TAG_RE, is_digest, parse_digest, sha256_digest, validate_tag
from .events import EventBus, ManifestDeleted, ManifestStored
from .fence import WriteFence
from .flights import Flights
from .immutable import ImmutableTags
from .journal import Change, ChangeJournal
from .referrers import ReferrersIndex
from .repositories import RepositoryCatalog

__all__ = ["BlobContentError", "RegistryService", "StoredManifest", "VirtualBlob", "VirtualContent"]

log = logging.getLogger(__name__)

# Child presence checks run concurrently, but not unboundedly against the backend.
_CHECK_CONCURRENCY = 16


class BlobContentError(Exception):
    """A blob read whole that is over its size limit or does not match its digest or size."""

    def __init__(self, message: str, detail: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class StoredManifest:
    digest: str
    manifest: ParsedManifest


class VirtualBlob(Protocol):
    """A blob a repository serves without storing it: its bytes are made on request."""

    size: int

    def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, end]`` (inclusive); raises ``RegistryError`` mid-stream when
        they can't be made right (the response must then be aborted). Archives read only
        the window a range covers and trust the blob to check what it makes."""


class VirtualContent(Protocol):
    """Content a repository serves beside its storage, never written to it (a full
    build's runnable images: manifests and configs from the metadata store, a layer
    synthesised; a licensed image's sealed layers, made again from their source). Asked
    only where the storage has nothing under the name; a manifest naming such a blob is
    accepted as naming a blob that is there."""

    async def find(self, repo: str, digest: str) -> VirtualBlob | None:
        """The blob ``digest`` when ``repo`` serves it virtually, else None."""

    async def manifest(self, repo: str, reference: str) -> ManifestData | None:
        """The manifest at tag or digest ``reference`` when ``repo`` serves it virtually."""

    async def tags(self, repo: str) -> list[str]:
        """The tags ``repo`` serves virtually (a few; listed beside the storage's)."""


# Per cached manifest beyond its objects' own sizes: the OrderedDict's hash slot and
# linked-list node (measured with tracemalloc on CPython 3.11: ~100 bytes an entry).
_ENTRY_OVERHEAD = 100


def _entry_size(key: tuple[str, str], item: ManifestData) -> int:
    """The memory an entry holds: bytes, strings, the record, the key and the slot, so
    the cap bounds memory rather than manifest bytes (small manifests used to cost ~2.6x
    their size). Strings shared with other entries are counted each time: an estimate
    that errs on the side of holding less."""
    return (sys.getsizeof(item.data) + sys.getsizeof(item.digest) + sys.getsizeof(item.media_type)
            + sys.getsizeof(item) + sys.getsizeof(item.__dict__) + sys.getsizeof(key) + sys.getsizeof(key[0])
            + _ENTRY_OVERHEAD)


class _ManifestCache:
    """LRU of digest-addressed manifests: immutable, so safe to serve from memory.
    ``max_bytes`` bounds the memory the entries hold (``_entry_size``), not just the
    manifests' bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], tuple[ManifestData, int]] = OrderedDict()
        self.bytes = 0

    def get(self, repo: str, digest: str) -> ManifestData | None:
        entry = self._items.get((repo, digest))
        if entry is None:
            return None
        self._items.move_to_end((repo, digest))
        return entry[0]

    def put(self, repo: str, item: ManifestData) -> None:
        key = (repo, item.digest)
        if key in self._items:
            return
        size = _entry_size(key, item)
        if size > self.max_bytes // 8:
            return
        self._items[key] = (item, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old

    def drop(self, repo: str, digest: str) -> None:
        entry = self._items.pop((repo, digest), None)
        if entry is not None:
            self.bytes -= entry[1]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


def _known_tag(repo: str, reference: str) -> None:
    """A reference that is no valid tag names no manifest: 404 ``MANIFEST_UNKNOWN``
    on reads and deletes, as reference registries answer (only a PUT to such a name is
    ``TAG_INVALID``)."""
    if not TAG_RE.match(reference):
        raise RegistryError(Errors.MANIFEST_UNKNOWN, {"name": repo, "reference": reference[:200]})


class RegistryService:
    def __init__(
        self,
        backend: Backend,
        referrers: ReferrersIndex,
        events: EventBus,
        journal: ChangeJournal,
        *,
        max_manifest_bytes: int = 4 * 1024 * 1024,
        manifest_cache_bytes: int = 64 * 1024 * 1024,
        immutable: ImmutableTags | None = None,
        catalog: RepositoryCatalog | None = None,
    ) -> None:
        self.backend = backend
        # The registry backend's catalog, kept by algomint (None: the backend's own pages).
        self.repository_catalog = catalog
        self.immutable = immutable
        self.referrers = referrers
        self.events = events
        self.journal = journal
        self.max_manifest_bytes = max_manifest_bytes
        self._cache = _ManifestCache(manifest_cache_bytes)
        # Concurrent pulls of one manifest share a backend read (never an older one).
        self._manifest_reads: Flights[tuple[str, str], ManifestData] = Flights()
        self._manifest_stats: Flights[tuple[str, str], ManifestInfo] = Flights()
        # Digests in-flight manifest writes rely on, for the garbage collector.
        self.fence = WriteFence()
        # Shielded writes still running (their client may be gone): shutdown waits for them.
        self._writes: set[asyncio.Task[None]] = set()
        # Content served beside the storage (runnable full images): manifest reads and
        # blob reads fall back to it where the storage has nothing.
        self.virtual: VirtualContent | None = None

    # -- manifests -------------------------------------------------------------
    async def get_manifest(self, repo: str, reference: str, accept: Sequence[str] = ()) -> ManifestData:
        if is_digest(reference):
            parse_digest(reference)
            item = self._cache.get(repo, reference)
            if item is None:
                item = await self._read_manifest(repo, reference)
                if item.digest != reference:
                    raise RegistryError(Errors.UNAVAILABLE, message="backend returned a manifest with another digest")
                self._cache.put(repo, item)
        else:
            _known_tag(repo, reference)
            item = await self._read_manifest(repo, reference)
            self._cache.put(repo, item)
        self._negotiate(item.media_type, accept, reference)
        return item

    async def stat_manifest(self, repo: str, reference: str, accept: Sequence[str] = ()) -> ManifestInfo:
        if is_digest(reference):
            parse_digest(reference)
            item = self._cache.get(repo, reference)
            if item is not None:
                self._negotiate(item.media_type, accept, reference)
                return item.info
        else:
            _known_tag(repo, reference)
        info = await self._manifest_stats.run((repo, reference), lambda: self._backend_stat(repo, reference))
        self._negotiate(info.media_type, accept, reference)
        return info

    async def _read_manifest(self, repo: str, reference: str) -> ManifestData:
        return await self._manifest_reads.run((repo, reference), lambda: self._backend_read(repo, reference))

    async def _backend_read(self, repo: str, reference: str) -> ManifestData:
        try:
            return await self.backend.get_manifest(repo, reference)
        except RegistryError as exc:
            item = await self._virtual_manifest(repo, reference, exc)
            if item is None:
                raise
            return item

    async def _backend_stat(self, repo: str, reference: str) -> ManifestInfo:
        try:
            return await self.backend.stat_manifest(repo, reference)
        except RegistryError as exc:
            item = await self._virtual_manifest(repo, reference, exc)
            if item is None:
                raise
            return item.info

    async def _virtual_manifest(self, repo: str, reference: str, exc: RegistryError) -> ManifestData | None:
        if self.virtual is None or exc.error not in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
            return None
        return await self.virtual.manifest(repo, reference)

    @staticmethod
    def _negotiate(media_type: str, accept: Sequence[str], reference: str) -> None:
        if not accepts(media_type, accept):
            raise RegistryError(
                Errors.MANIFEST_UNKNOWN,
                {"reference": reference, "mediaType": media_type, "reason": "not in the accepted media types"},
            )

    async def put_manifest(
        self, repo: str, reference: str, data: bytes, content_type: str | None, actor: str | None = None
    ) -> StoredManifest:
        if len(data) > self.max_manifest_bytes:
            raise RegistryError(Errors.MANIFEST_TOO_LARGE, {"size": len(data), "limit": self.max_manifest_bytes})
        tag: str | None = None
        digest = sha256_digest(data)
        if is_digest(reference):
            wanted = parse_digest(reference)
            if wanted.algorithm != "sha256":
                digest = f"{wanted.algorithm}:{hashlib.new(wanted.algorithm, data).hexdigest()}"
            if digest != reference:
                raise RegistryError(Errors.DIGEST_INVALID, {"reference": reference, "computed": digest})
        else:
            tag = validate_tag(reference)
        manifest = parse_manifest(data, content_type)
        named = [digest, *(d.digest for d in (*manifest.blobs, *manifest.manifests))]
        if manifest.subject is not None:
            named.append(manifest.subject.digest)
        # Pinned from before the existence checks until stored: a concurrent garbage
        # collection spares what this write relies on.
        pin = self.fence.pin(named)
        try:
            await self._check_references(repo, manifest)
        except BaseException:
            self.fence.release(pin)
            raise
        # Shielded: a client that goes away must not cut a stored manifest off from its
        # referrers entry and event.
        await self._shielded(self._claimed_store(repo, reference, tag, data, manifest, digest, actor),
                             lambda: self.fence.release(pin))
        return StoredManifest(digest, manifest)

    async def _shielded(self, write: Coroutine[Any, Any, None], done: Callable[[], None] | None = None) -> None:
        """Run ``write`` to its end even if the caller is cancelled; ``drain`` waits for it."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)

        def finished(task: asyncio.Task[None]) -> None:
            self._writes.discard(task)
            if done is not None:
                done()
            if not task.cancelled():
                task.exception()  # mark it retrieved: a caller still waiting re-raises it anyway

        task.add_done_callback(finished)
        await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for every shielded write to finish (before the metadata store closes)."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _claimed_store(
        self, repo: str, reference: str, tag: str | None, data: bytes, manifest: ParsedManifest,
        digest: str, actor: str | None,
    ) -> None:
        """Store, after claiming the tag where tags are immutable (given back on failure)."""
        if tag is None or self.immutable is None or not self.immutable.applies(repo):
            return await self._store(repo, reference, tag, data, manifest, digest, actor)
        claimed = await self.immutable.claim(repo, tag, digest, lambda: self._tag_digest(repo, tag))
        try:
            await self._store(repo, reference, tag, data, manifest, digest, actor)
        except BaseException:
            if claimed:
                with contextlib.suppress(Exception):  # never hide the backend's error
                    await self.immutable.release(repo, tag, digest)
            raise

    async def _tag_digest(self, repo: str, tag: str) -> str | None:
        try:
            return (await self.backend.stat_manifest(repo, tag)).digest
        except RegistryError as exc:
            if exc.error in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                return None
            raise

    async def _store(
        self, repo: str, reference: str, tag: str | None, data: bytes, manifest: ParsedManifest,
        digest: str, actor: str | None,
    ) -> None:
        change = await self.journal.begin("put", repo, reference, digest, actor)
        try:
            await self.backend.put_manifest(repo, reference, data, manifest.media_type, digest)
        except BaseException:
            await self._forget_change(change)  # the client hears of the failure and retries
            raise
        await self._after_put(repo, tag, digest, data, manifest, actor)
        await self.journal.end(change)

    async def _after_put(
        self, repo: str, tag: str | None, digest: str, data: bytes, manifest: ParsedManifest, actor: str | None
    ) -> None:
        self._cache.put(repo, ManifestData(digest, manifest.media_type, data))
        if self.repository_catalog is not None:
            await self.repository_catalog.record(repo)
        await self.referrers.record(repo, digest, len(data), manifest)
        await self.events.publish(ManifestStored(repo, digest, manifest.media_type, tag, manifest, actor))

    async def _forget_change(self, change: int) -> None:
        # Never hide the backend's error behind a metadata one.
        with contextlib.suppress(Exception):
            await self.journal.end(change)

    async def _check_references(self, repo: str, manifest: ParsedManifest) -> None:
        limit = asyncio.Semaphore(_CHECK_CONCURRENCY)

        async def present(descriptor: Descriptor, is_manifest: bool) -> Descriptor | None:
            async with limit:
                try:
                    if is_manifest:
                        await self.backend.stat_manifest(repo, descriptor.digest)
                    else:
                        await self.backend.stat_blob(repo, descriptor.digest)
                except RegistryError as exc:
                    if exc.error not in (Errors.BLOB_UNKNOWN, Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                        raise
                    # A blob the repository makes on request (a licensed image's sealed layer) is there.
                    if is_manifest or self.virtual is None or await self.virtual.find(repo, descriptor.digest) is None:
                        return descriptor
                    return None
                return None

        checks = [present(d, False) for d in manifest.blobs] + [present(d, True) for d in manifest.manifests]
        missing = [d for d in await asyncio.gather(*checks) if d is not None]
        if missing:
            raise RegistryError(
                Errors.MANIFEST_BLOB_UNKNOWN,
                {"missing": [{"digest": d.digest, "mediaType": d.media_type} for d in missing[:20]]},
            )

    async def delete_manifest(self, repo: str, reference: str, actor: str | None = None) -> None:
        if is_digest(reference):
            parse_digest(reference)
        else:
            _known_tag(repo, reference)
        await self._shielded(self._delete(repo, reference, actor))

    async def _delete(self, repo: str, reference: str, actor: str | None) -> None:
        change = await self.journal.begin("delete", repo, reference, None, actor)
        try:
            await self.backend.delete_manifest(repo, reference)
        except BaseException:
            await self._forget_change(change)
            raise
        await self._after_delete(repo, reference, actor)
        await self.journal.end(change)

    async def _after_delete(self, repo: str, reference: str, actor: str | None) -> None:
        if self.repository_catalog is not None:
            await self.repository_catalog.record(repo)
        if is_digest(reference):
            self._cache.drop(repo, reference)
            await self.referrers.forget(repo, reference)
        await self.events.publish(ManifestDeleted(repo, reference, actor))

    def forget_cached_manifests(self) -> None:
        """Another replica deleted a manifest: serve nothing by digest from memory that
        the backend may no longer hold."""
        self._cache.clear()

    async def forget_manifest(self, repo: str, digest: str) -> None:
        """A manifest the garbage collector removed: no longer served from the cache or
        listed as a referrer (no event: nobody deleted it, it was unreachable)."""
        self._cache.drop(repo, digest)
        await self.referrers.forget(repo, digest)

    # -- crash recovery ------------------------------------------------------------
    async def replay_changes(self, *, own: bool = True) -> int:
        """Finish the manifest changes a crash interrupted (``journal.py``); returns how
        many had taken effect. A change the backend can't confirm now stays pending.
        ``own``: this replica's unfinished changes too (none are in flight at start-up)."""
        replayed = 0
        for change in await self.journal.pending(own=own):
            if not await self.journal.claim(change.id):
                continue  # another replica is finishing it
            try:
                took_effect = await (self._replay_put(change) if change.op == "put" else self._replay_delete(change))
            except RegistryError as exc:
                log.warning("manifest change left pending", extra={"repo": change.repo, "reference": change.reference,
                                                                   "error": exc.message})
                continue
            replayed += took_effect
            await self.journal.end(change.id)
        return replayed

    async def _replay_put(self, change: Change) -> bool:
        assert change.digest is not None
        try:
            item = await self.backend.get_manifest(change.repo, change.digest)
            tag = None if is_digest(change.reference) else change.reference
            if tag is not None and (await self.backend.stat_manifest(change.repo, tag)).digest != change.digest:
                tag = None  # moved on since: the event must not make the older push the latest
        except RegistryError as exc:
            if exc.error in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                return False  # never stored
            raise
        manifest = parse_manifest(item.data, item.media_type)
        await self._after_put(change.repo, tag, change.digest, item.data, manifest, change.actor)
        return True

    async def _replay_delete(self, change: Change) -> bool:
        try:
            await self.backend.stat_manifest(change.repo, change.reference)
            return False  # still there: the delete never happened
        except RegistryError as exc:
            if exc.error not in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                raise
        await self._after_delete(change.repo, change.reference, change.actor)
        return True

    async def list_referrers(
        self, repo: str, digest: str, artifact_type: str | None, n: int | None = None, last: str | None = None
    ) -> tuple[list[Descriptor], str | None]:
        """A page of referrers and the ``last`` of the next page (``None``: final)."""
        parse_digest(digest)
        page, more = await self.referrers.list(repo, digest, artifact_type, n, last)
        return page, (page[-1].digest if more and page else None)

    # -- small blobs ---------------------------------------------------------------
    async def read_small_blob(self, repo: str, digest: str, limit: int, size: int | None = None) -> bytes:
        """A blob (a config, a descriptor, a plugin file) read whole into memory: at most
        ``limit`` bytes, exactly ``size`` when the referencing descriptor states one, and
        checked against its digest before a byte is returned (``BlobContentError``
        otherwise). The read stops as soon as the blob proves too long."""
        parsed = parse_digest(digest)
        detail: dict[str, Any] = {"repository": repo, "digest": digest}
        if size is not None and size > limit:
            raise BlobContentError(f"blob {digest} in {repo} is {size} bytes; the limit is {limit}", detail)
        bound = limit if size is None else size
        hasher, chunks, received = parsed.hasher(), [], 0
        async with await self.backend.open_blob(repo, digest) as reader:
            if reader.size > bound:
                said = f"its descriptor says {size}" if size is not None else f"the limit is {limit}"
                raise BlobContentError(f"blob {digest} in {repo} is {reader.size} bytes; {said}", detail)
            async for chunk in reader:
                received += len(chunk)
                if received > bound:
                    raise BlobContentError(f"blob {digest} in {repo} is longer than {bound} bytes", detail)
                hasher.update(chunk)
                chunks.append(chunk)
            if (size is not None and received != size) or f"{parsed.algorithm}:{hasher.hexdigest()}" != digest:
                raise BlobContentError(f"blob {digest} in {repo} does not match its digest or size", detail)
            reader.confirm()
        return b"".join(chunks)

    # -- listings ----------------------------------------------------------------
    # Each returns the page and the ``last`` value of the next page (``None`` when this
    # is the final one); the backend answers one page, not the whole listing.
    async def tags(self, repo: str, n: int | None, last: str | None) -> tuple[list[str], str | None]:
        page, more = await self.backend.tags_page(repo, n, last)
        extra = await self.virtual.tags(repo) if self.virtual is not None else []
        extra = [t for t in extra if last is None or t > last]
        if extra:
            if more and page:  # tags past the storage's page belong to a later one
                extra = [t for t in extra if t <= page[-1]]
            page = sorted({*page, *extra})
            if n is not None and len(page) > n:
                page, more = page[:n], True
        return page, (page[-1] if more and page else None)

    async def catalog(self, n: int | None, last: str | None) -> tuple[list[str], str | None]:
        page, more = await self.repositories_page(n, last)
        return page, (page[-1] if more and page else None)

    async def repositories_page(self, n: int | None, last: str | None, prefix: str = "") -> tuple[list[str], bool]:
        """Up to ``n`` repositories after ``last`` starting with ``prefix``, sorted, and
        whether more follow."""
        if self.repository_catalog is not None:
            return await self.repository_catalog.page(n, last, prefix)
        return await self.backend.repositories_page(n, last, prefix)
