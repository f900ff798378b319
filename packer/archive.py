"""Any artifact as one deterministic tar in OCI image-layout form, planned up front.

Layout: ``oci-layout``, ``index.json`` (the root manifest and, for a full package, each
runtime image manifest, named with ``org.opencontainers.image.ref.name``; asked for one
platform, each runtime image's manifest for that platform only, under the same name), the
``blobs/`` directories, then ``blobs/<alg>/<hex>`` for manifests, configs, thin-package
layers and image layers, in that order, each blob once. Every header is a fixed ustar
header written here (mtime 0, uid/gid 0, no owner names, modes 0644/0755), so the
archive's bytes depend only on the root digest (and the platform asked for): its size is known before the first byte
and any byte range maps onto a list of segments (header bytes, blob byte ranges,
padding). A range asks the backend for only the blob bytes it covers; whole blobs are
digest-verified as they stream, unless the storage vouches for them
(``BlobReader.verified``: checked when written or on an earlier whole read).

A blob the repository serves without storing it (``VirtualBlob``: a runnable image's
package layer or config, any blob made on request) is laid out from what the
``Synthetic`` callback returns: literal bytes, stored-blob ranges, or the virtual blob
itself (``Segment.virtual``), read with ``VirtualBlob.read`` for just the window asked.
A virtual blob checks its own bytes (and raises mid-stream when it can't make them
right), so only its length is checked here: hashing it again would cost a second pass.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator

from proxy.backend import Backend, BlobReader
from proxy.oci import mediatypes as mt
from proxy.oci.errors import Errors, RegistryError
from proxy.oci.manifest import Descriptor, parse_manifest
from proxy.oci.reference import is_digest, sha256_digest
from proxy.service.registry import RegistryService, VirtualBlob

from .fullbuild.names import ANNOTATION_IMAGE_REF
from .platform import Platform
from .tarstream import BLOCK, ustar_header

__all__ = [
    "ArchiveError",
    "ArchiveLimits",
    "ArchivePlan",
    "BlobPart",
    "PlatformUnknown",
    "Part",
    "Segment",
    "Synthetic",
    "VirtualPart",
    "iter_parts",
    "segment_parts",
    "open_part",
    "plan_archive",
    "read_part",
    "read_virtual",
    "stream_archive",
]

_IMAGE_CONFIGS = (mt.OCI_CONFIG, mt.DOCKER_CONFIG)
BATCH = 1024 * 1024  # bytes per write and per hash step


class ArchiveError(Exception):
    """The artifact can't be archived (too big a graph) or a blob failed mid-stream."""


class PlatformUnknown(ArchiveError):
    """``?platform=`` names a platform no manifest of the artifact has."""

    def __init__(self, platform: Platform, available: list[str]) -> None:
        have = ", ".join(available) if available else "no platform-specific manifests"
        super().__init__(f"no manifest for platform {platform} (the artifact has {have})")
        self.platform, self.available = platform, available


@dataclass(frozen=True)
class ArchiveLimits:
    max_manifests: int = 1024
    max_manifest_bytes: int = 16 * 1024 * 1024  # all manifests of one archive, held in memory
    max_blobs: int = 100_000
    max_depth: int = 4


@dataclass(frozen=True)
class Segment:
    """Bytes of a layout: ``data`` (literal), else the whole of ``virtual`` (a blob made on
    request, named ``digest`` in messages) when set, else the whole stored blob ``digest``."""

    offset: int  # where it starts in the layout
    size: int
    data: bytes | None = None
    digest: str | None = None
    virtual: VirtualBlob | None = None

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass
class ArchivePlan:
    repository: str
    ref_name: str
    root: Descriptor
    segments: list[Segment]
    size: int
    names: list[str]  # tar member names, in order
    platform: Platform | None = None  # one platform's runtime images only

    @property
    def etag(self) -> str:
        return f'"{self.root.digest}"' if self.platform is None else f'"{self.root.digest};platform={self.platform}"'


class _Builder:
    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.names: list[str] = []
        self.offset = 0

    def _literal(self, data: bytes) -> None:
        if data:
            self.segments.append(Segment(self.offset, len(data), data=data))
            self.offset += len(data)

    def directory(self, name: str) -> None:
        self.names.append(name)
        self._literal(ustar_header(name, 0, typeflag=b"5", mode=0o755))

    def file(self, name: str, data: bytes) -> None:
        self.names.append(name)
        self._literal(ustar_header(name, len(data)) + data + b"\0" * (-len(data) % BLOCK))

    def blob(self, name: str, digest: str, size: int) -> None:
        self.names.append(name)
        self._literal(ustar_header(name, size))
        if size:
            self.segments.append(Segment(self.offset, size, digest=digest))
            self.offset += size
        self._literal(b"\0" * (-size % BLOCK))

    def inline(self, name: str, segments: list[Segment], size: int) -> None:
        """A blob made of other segments (a synthesised layer), placed at this offset."""
        self.names.append(name)
        self._literal(ustar_header(name, size))
        self.segments += [replace(s, offset=self.offset + s.offset) for s in segments if s.size]
        self.offset += size
        self._literal(b"\0" * (-size % BLOCK))

    def finish(self) -> None:
        self._literal(b"\0" * (2 * BLOCK))


def _blob_name(digest: str) -> str:
    algorithm, encoded = digest.split(":", 1)
    return f"blobs/{algorithm}/{encoded}"


# A blob the repository serves without storing it (a runnable image's package layer or config,
# any other ``VirtualBlob``): its segments (offsets from 0; ``[Segment(0, size, digest=d,
# virtual=blob)]`` for a blob read as it is made) and size, or None for a stored blob.
# Asked for the configs and layers of images (any media type); a thin package's files are
# always stored, and asking for each of thousands would be a metadata query apiece.
Synthetic = Callable[[str], Awaitable[tuple[list[Segment], int] | None]]


async def _fetch(service: RegistryService, repo: str, digest: str) -> Any:
    data = await service.get_manifest(repo, digest)
    if digest.startswith("sha256:") and sha256_digest(data.data) != digest:
        raise RegistryError(Errors.UNAVAILABLE, message=f"manifest {digest} fails its digest")
    return data


async def _one_platform(service: RegistryService, repo: str, children: list[Descriptor], platform: Platform,
                        available: set[str], limits: ArchiveLimits) -> list[tuple[Descriptor, str | None]]:
    """The root's children for one platform, each with the name ``index.json`` gives it:
    entries of another platform are left out, and a named multi-platform image (a full
    package's licensed index) is replaced by its manifest for ``platform``, under its name.
    Those indexes are read too: they count against ``max_manifests`` and ``max_manifest_bytes``."""
    out: list[tuple[Descriptor, str | None]] = []
    read = held = 0
    for child in children:
        name = (child.annotations or {}).get(ANNOTATION_IMAGE_REF)
        own = Platform.of_entry(child.platform, child.annotations)
        if own is not None:
            available.add(str(own))
            if platform.selects(own):
                out.append((child, name))
            continue
        if name and child.media_type in mt.INDEX_MANIFESTS:
            read += 1
            if read > limits.max_manifests:
                raise ArchiveError(f"more than {limits.max_manifests} manifests")
            index = await _fetch(service, repo, child.digest)
            held += len(index.data)
            if held > limits.max_manifest_bytes:
                raise ArchiveError(f"manifests exceed {limits.max_manifest_bytes} bytes")
            parsed = parse_manifest(index.data, index.media_type)
            found = []
            for grandchild in parsed.manifests:
                theirs = Platform.of_entry(grandchild.platform, grandchild.annotations)
                if theirs is not None:
                    available.add(str(theirs))
                    if platform.selects(theirs):
                        found.append(grandchild)
            if found:
                out.append((found[0], name))  # the one a client would pick, named like the image
            continue
        out.append((child, name))
    return out


async def plan_archive(service: RegistryService, repo: str, reference: str,
                       limits: ArchiveLimits = ArchiveLimits(), platform: Platform | None = None,
                       synthetic: Synthetic | None = None) -> ArchivePlan:
    """Walk the artifact's manifests (held, verified, in memory) and lay out the tar.
    With ``platform``, the runtime images are that platform's only (``_one_platform``):
    the root manifest is unchanged, so the layout holds the blobs of one platform.
    An image's config or layer that ``synthetic`` knows is laid out from its parts."""
    root_data = await service.get_manifest(repo, reference)
    if sha256_digest(root_data.data) != root_data.digest and root_data.digest.startswith("sha256:"):
        raise RegistryError(Errors.UNAVAILABLE, message="backend returned a manifest that fails its digest")
    root_parsed = parse_manifest(root_data.data, root_data.media_type)
    ref_name = f"{repo}@{reference}" if is_digest(reference) else f"{repo}:{reference}"
    root = Descriptor(root_data.media_type, root_data.digest, len(root_data.data),
                      artifact_type=root_parsed.artifact_type if root_parsed.document.get("artifactType") else None)

    manifests: dict[str, bytes] = {root.digest: root_data.data}
    order = [root.digest]
    configs: list[Descriptor] = []
    image_configs: list[Descriptor] = []
    thin_layers: list[Descriptor] = []
    image_layers: list[Descriptor] = []
    named: list[dict[str, Any]] = []
    held = len(root_data.data)
    queue = [(root_parsed, 0)]
    available: set[str] = set()
    matched: list[Descriptor] = []
    while queue:
        parsed, depth = queue.pop(0)
        if parsed.is_index:
            if depth >= limits.max_depth:
                raise ArchiveError(f"manifest graph deeper than {limits.max_depth}")
            if depth == 0 and platform is not None:
                chosen = await _one_platform(service, repo, parsed.manifests, platform, available, limits)
                matched = [c for c, _ in chosen if c.platform]
            else:
                chosen = [(c, (c.annotations or {}).get(ANNOTATION_IMAGE_REF) if depth == 0 else None)
                          for c in parsed.manifests]
            for child, name in chosen:
                if child.digest in manifests:
                    continue
                if len(manifests) >= limits.max_manifests:
                    raise ArchiveError(f"more than {limits.max_manifests} manifests")
                data = await _fetch(service, repo, child.digest)
                held += len(data.data)
                if held > limits.max_manifest_bytes:
                    raise ArchiveError(f"manifests exceed {limits.max_manifest_bytes} bytes")
                manifests[child.digest] = data.data
                order.append(child.digest)
                queue.append((parse_manifest(data.data, data.media_type), depth + 1))
                if name:
                    entry = {"mediaType": data.media_type, "digest": child.digest, "size": len(data.data),
                             "annotations": {mt.ANNOTATION_REF_NAME: name}}
                    if child.platform:
                        entry["platform"] = child.platform
                    named.append(entry)
        else:
            assert parsed.config is not None
            configs.append(parsed.config)
            image = parsed.config.media_type in _IMAGE_CONFIGS
            (image_layers if image else thin_layers).extend(parsed.layers)
            if image:
                image_configs.append(parsed.config)

    if platform is not None and not matched:
        raise PlatformUnknown(platform, sorted(available))
    root_entry: dict[str, Any] = {"mediaType": root.media_type, "digest": root.digest, "size": root.size}
    if root.artifact_type:
        root_entry["artifactType"] = root.artifact_type
    root_entry["annotations"] = {mt.ANNOTATION_REF_NAME: ref_name}
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [root_entry, *named]}

    out = _Builder()
    out.file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    out.file("index.json", json.dumps(index, separators=(",", ":")).encode())
    out.directory("blobs/")
    algorithms = sorted({d.split(":", 1)[0] for d in [*order, *(b.digest for b in configs + thin_layers + image_layers)]})
    for algorithm in algorithms:
        out.directory(f"blobs/{algorithm}/")
    seen: set[str] = set()
    for digest in order:
        seen.add(digest)
        out.file(_blob_name(digest), manifests[digest])
    asked = {b.digest for b in [*image_configs, *image_layers]} if synthetic is not None else set()
    for blob in [*configs, *thin_layers, *image_layers]:
        if blob.digest in seen:
            continue
        seen.add(blob.digest)
        if len(seen) > limits.max_blobs:
            raise ArchiveError(f"more than {limits.max_blobs} blobs")
        made = await synthetic(blob.digest) if synthetic is not None and blob.digest in asked else None
        if made is not None and made[1] == blob.size:
            out.inline(_blob_name(blob.digest), *made)
            continue
        out.blob(_blob_name(blob.digest), blob.digest, blob.size)
    out.finish()
    return ArchivePlan(repo, ref_name, root, out.segments, out.offset, out.names, platform)


@dataclass(frozen=True)
class BlobPart:
    """Bytes ``[offset, offset+length)`` of one blob of the archive."""

    repository: str
    digest: str
    offset: int
    length: int
    size: int

    @property
    def whole(self) -> bool:
        return self.offset == 0 and self.length == self.size


@dataclass(frozen=True)
class VirtualPart:
    """Bytes ``[offset, offset+length)`` of a blob made on request (``VirtualBlob``)."""

    blob: VirtualBlob
    digest: str | None  # for messages
    offset: int
    length: int


Part = bytes | BlobPart | VirtualPart


def iter_parts(plan: ArchivePlan, start: int = 0, end: int | None = None) -> Iterator[Part]:
    """Archive bytes ``[start, end]`` (inclusive) as literal pieces and blob ranges."""
    end = plan.size - 1 if end is None else end
    if plan.size == 0 or start > end:
        return
    yield from segment_parts(plan.segments, plan.repository, start, end)


def segment_parts(segments: list[Segment], repository: str, start: int, end: int) -> Iterator[Part]:
    """Bytes ``[start, end]`` (inclusive) of a layout of ``segments`` (ordered, contiguous,
    from 0) as literal pieces, ranges of ``repository``'s blobs and of virtual blobs."""
    index = bisect.bisect_right([s.offset for s in segments], start) - 1
    position = start
    while position <= end:
        segment = segments[index]
        local = position - segment.offset
        length = min(segment.end, end + 1) - position
        if segment.data is not None:
            yield segment.data[local : local + length]
        elif segment.virtual is not None:
            yield VirtualPart(segment.virtual, segment.digest, local, length)
        else:
            assert segment.digest is not None
            yield BlobPart(repository, segment.digest, local, length, segment.size)
        position += length
        index += 1


async def open_part(backend: Backend, part: BlobPart) -> BlobReader:
    try:
        return await backend.open_blob(part.repository, part.digest, part.offset, part.length)
    except RegistryError as exc:
        raise ArchiveError(f"blob {part.digest}: {exc.message}") from None


async def stream_archive(backend: Backend, plan: ArchivePlan, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
    """Bytes ``[start, end]`` (inclusive) of the archive. Raises ``ArchiveError`` when a
    blob comes back short or fails its digest: the caller must not end cleanly."""
    for part in iter_parts(plan, start, end):
        if isinstance(part, bytes):
            yield part
        elif isinstance(part, VirtualPart):
            async with contextlib.aclosing(read_virtual(part)) as chunks:
                async for chunk in chunks:
                    yield chunk
        else:
            reader = await open_part(backend, part)
            async for chunk in read_part(reader, part):
                yield chunk


async def read_part(reader: BlobReader, part: BlobPart) -> AsyncIterator[bytes]:
    """The part's bytes from an open reader (closed at the end), re-cut into ``BATCH``
    pieces: fewer, larger writes, and each piece of a whole blob is hashed in a thread
    while the next one streams. The last piece of a hashed blob is yielded only once the
    digest matches, so a wrong blob never reaches the consumer complete."""
    hasher = hashlib.new(part.digest.split(":", 1)[0]) if part.whole and not reader.verified else None
    hashing: asyncio.Future[None] | None = None
    sent = 0
    parts: list[bytes] = []
    held = 0

    async def flush(last: bool) -> bytes:
        nonlocal hashing, parts, held
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts, held = [], 0
        if hasher is not None:
            if hashing is not None:
                await hashing  # one piece in flight: memory stays bounded
            hashing = asyncio.ensure_future(asyncio.to_thread(hasher.update, data))
            if last:
                await hashing
                _check(hasher, part)
        return data

    try:
        async for chunk in reader:
            sent += len(chunk)
            if sent > part.length:
                raise ArchiveError(f"blob {part.digest} is larger than its descriptor says")
            parts.append(chunk)
            held += len(chunk)
            if held >= BATCH or sent == part.length:
                yield await flush(sent == part.length)
        if parts:
            yield await flush(False)
        if hashing is not None:
            await hashing
    except RegistryError as exc:
        raise ArchiveError(f"blob {part.digest}: {exc.message}") from None
    finally:
        await reader.close()
        if hashing is not None and not hashing.done():
            hashing.cancel()
    if sent != part.length:
        raise ArchiveError(f"blob {part.digest} ended after {sent} of {part.length} bytes")
    if hasher is not None:
        _check(hasher, part)
        reader.confirm()


def _check(hasher: "hashlib._Hash", part: BlobPart) -> None:
    if f"{part.digest.split(':', 1)[0]}:{hasher.hexdigest()}" != part.digest:
        raise ArchiveError(f"blob {part.digest} failed digest verification")


async def read_virtual(part: VirtualPart) -> AsyncGenerator[bytes, None]:
    """The part's bytes from ``VirtualBlob.read`` (only its window is asked for). The blob
    checks what it makes; its length is checked here. Its failure (``RegistryError``, an
    ``OSError``) or a wrong length becomes ``ArchiveError``: the caller must not end cleanly."""
    name = part.digest or "a virtual blob"
    sent = 0
    try:
        async with contextlib.aclosing(part.blob.read(part.offset, part.offset + part.length - 1)) as chunks:
            async for chunk in chunks:
                sent += len(chunk)
                if sent > part.length:
                    raise ArchiveError(f"{name} made more bytes than the {part.length} asked for")
                yield chunk
    except RegistryError as exc:
        raise ArchiveError(f"{name}: {exc.message}") from None
    except OSError as exc:
        raise ArchiveError(f"{name}: {exc}") from None
    if sent != part.length:
        raise ArchiveError(f"{name} ended after {sent} of {part.length} bytes")
