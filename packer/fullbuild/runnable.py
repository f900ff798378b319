"""The full package as one runnable image: the licensed runtime image plus one layer.

``business/<system>/<algorithm>:<version>-<license>-image`` is the licensed runtime image
(per platform, for an index) with one more layer on top: an uncompressed tar holding the
license-specific descriptor at ``/algomint/descriptor.json`` and every file of the
licensed thin package (sealed models and the license file included) under
``/algomint/package/``. ``podman run`` of that one reference has everything.

Nothing of it is written to the storage: a registry backend's upstream refuses a manifest
whose layer it does not hold, and its garbage collection would drop a config no stored
manifest names. The runnable manifests (and index) and configs are KB and are held in the
metadata store (``runnable_objects``, ``runnable_tags``); ``RegistryService.virtual``
serves them where the storage has nothing under that name. Every other layer is the
licensed image's, already linked into the business repository.

The package layer is never stored either. Its bytes are a function of the licensed thin manifest alone
(``layer_layout``): fixed ustar headers (mtime 0, uid/gid 0, modes 0644/0755, PAX ``path``
only for names over 100 bytes), entries in byte order of their names, each file's bytes
being a thin-package blob. A build streams it once to learn its digest and size and
records them (``BuildStore.record_runnable``); a blob GET of that digest in that
repository lays it out again and streams it from the thin blobs, ``Range`` included.
What is streamed is checked: a whole GET against the recorded digest (the last bytes are
held back until it matches), a range blob by blob (each blob it touches is read whole
and hashed, unless the storage vouches for it: ``[storage] verify_reads``), so a changed
thin blob ends the response with an error instead of wrong bytes.

Liveness follows the thin manifest: the layer is served while its recorded source
manifest is in the repository, which keeps every blob it is made of; garbage collection
sees a referenced digest without a link and leaves it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Awaitable, Callable, Sequence

from proxy.backend import Backend, ManifestData
from proxy.oci import mediatypes as mt
from proxy.oci.errors import Errors, RegistryError
from proxy.oci.manifest import parse_manifest
from proxy.oci.reference import is_digest, sha256_digest
from proxy.service.registry import RegistryService, VirtualBlob

from ..archive import ArchiveError, BlobPart, Segment, VirtualPart, open_part, read_part, read_virtual, segment_parts
from ..layers import OUTPUT_MEDIA_TYPES
from ..package import PackageError, validate_path
from ..tarstream import BLOCK, ustar_header
from .names import BuildError
from .package_files import UNPACK_ANNOTATION
from .sealed import SealedLayers
from .store import BuildStore

__all__ = [
    "DESCRIPTOR_FILE", "IMAGE_SUFFIX", "LABEL_PACKAGE_DIR", "PACKAGE_DIR", "LayerLayout", "LayoutError", "Runnable",
    "RunnableLayer", "HeldBlob", "layer_layout", "reserved_runnable", "runnable_tag", "stream_layer",
]

PACKAGE_DIR = "algomint/package"
DESCRIPTOR_FILE = "algomint/descriptor.json"
IMAGE_SUFFIX = "-image"
LABEL_PACKAGE_DIR = "org.algomint.package.dir"
_MANIFESTS = mt.MANIFEST_TYPES


class LayoutError(Exception):
    """A thin manifest whose files can't be laid out as a layer (no title, a clash)."""


def runnable_tag(version: str, license: str, position: int) -> str:
    """The runnable image of the package's ``position``-th distinct runtime image."""
    return f"{version}-{license}{IMAGE_SUFFIX}" + (f"-{position + 1}" if position else "")


def reserved_runnable(tag: str, suffixes: Sequence[str]) -> str | None:
    """The reserved ending of ``tag`` when it names a runnable image (``-<license>-image``
    or ``-<license>-image-<n>``), else None: thin tags may not use that name space."""
    for suffix in suffixes:
        if re.search(rf"{re.escape(suffix)}{IMAGE_SUFFIX}(-[0-9]+)?$", tag):
            return f"{suffix}{IMAGE_SUFFIX}"
    return None


# -- the layout --------------------------------------------------------------------
@dataclass(frozen=True)
class LayerLayout:
    segments: list[Segment]  # header bytes and blob contents, in order
    size: int
    names: list[str]


def _header(name: str, size: int, typeflag: bytes, mode: int) -> bytes:
    """A fixed header; a name over 100 bytes goes in a PAX ``path`` record first."""
    raw = name.encode()
    if len(raw) <= 100:
        return ustar_header(name, size, typeflag=typeflag, mode=mode)
    record = b" path=" + raw + b"\n"
    length = len(record)
    while len(str(length).encode()) + len(record) != length:
        length = len(str(length).encode()) + len(record)
    pax = str(length).encode() + record
    short = raw[:100].decode(errors="ignore")
    return (ustar_header("././@PaxHeader", len(pax), typeflag=b"x") + pax + b"\0" * (-len(pax) % BLOCK)
            + ustar_header(short, size, typeflag=typeflag, mode=mode))


def layer_layout(thin: ManifestData) -> LayerLayout:
    """The synthesised layer of a licensed thin package: the descriptor and its files."""
    parsed = parse_manifest(thin.data, thin.media_type)
    if parsed.is_index or parsed.config is None:
        raise LayoutError(f"{thin.digest} is not a package manifest")
    files: dict[str, tuple[str, int]] = {DESCRIPTOR_FILE: (parsed.config.digest, parsed.config.size)}
    for position, layer in enumerate(parsed.layers):
        title = (layer.annotations or {}).get(mt.ANNOTATION_TITLE)
        try:
            validate_path(title, f"package file {position}")
        except PackageError as exc:
            raise LayoutError(exc.reason) from None
        if (layer.annotations or {}).get(UNPACK_ANNOTATION):
            title += ".tar.gz"  # a packed directory (oras) is delivered as the archive it is
        path = f"{PACKAGE_DIR}/{title}"
        if path in files:
            raise LayoutError(f"package file {title!r} appears twice")
        files[path] = (layer.digest, layer.size)
    directories = {"/".join(path.split("/")[:i]) + "/" for path in files for i in range(1, path.count("/") + 1)}
    clash = sorted(d for d in directories if d[:-1] in files)
    if clash:
        raise LayoutError(f"package file {clash[0][len(PACKAGE_DIR) + 1 : -1]!r} is also a directory of other files")
    entries = sorted([*directories, *files], key=lambda n: n.encode())
    segments: list[Segment] = []
    offset = 0

    def literal(data: bytes) -> None:
        nonlocal offset
        if data:
            segments.append(Segment(offset, len(data), data=data))
            offset += len(data)

    for name in entries:
        if name.endswith("/"):
            literal(_header(name, 0, b"5", 0o755))
            continue
        digest, size = files[name]
        literal(_header(name, size, b"0", 0o644))
        if size:
            segments.append(Segment(offset, size, digest=digest))
            offset += size
        literal(b"\0" * (-size % BLOCK))
    literal(b"\0" * (2 * BLOCK))
    return LayerLayout(segments, offset, entries)


async def _hash(hasher: "hashlib._Hash", data: bytes) -> None:
    if len(data) > 256 * 1024:
        await asyncio.to_thread(hasher.update, data)  # hashlib releases the GIL on large buffers
    else:
        hasher.update(data)


def _unavailable(message: str) -> RegistryError:
    return RegistryError(Errors.UNAVAILABLE, message=message)


async def _literal(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def _slice(backend: Backend, part: BlobPart) -> AsyncGenerator[bytes, None]:
    """Part of a blob, after checking the whole blob: bytes past the slice are read and
    hashed, and the slice's last piece waits for the match; unless the storage vouches for
    the blob (``[storage] verify_reads``: ``always``, the default for a registry backend,
    never does), when only the slice is read and its length checked."""
    reader = await open_part(backend, BlobPart(part.repository, part.digest, 0, part.size, part.size))
    if reader.verified:
        await reader.close()
        async for chunk in read_part(await open_part(backend, part), part):
            yield chunk
        return
    hasher = hashlib.new(part.digest.split(":", 1)[0])
    held: bytes | None = None
    seen = 0
    try:
        async for chunk in reader:
            begin, seen = seen, seen + len(chunk)
            if seen > part.size:
                raise ArchiveError(f"blob {part.digest} is larger than its descriptor says")
            await _hash(hasher, chunk)
            low, high = max(begin, part.offset), min(seen, part.offset + part.length)
            if low < high:
                if held is not None:
                    yield held
                held = chunk[low - begin : high - begin]
    finally:
        await reader.close()
    if seen != part.size or f"{part.digest.split(':', 1)[0]}:{hasher.hexdigest()}" != part.digest:
        raise ArchiveError(f"blob {part.digest} failed digest verification")
    reader.confirm()
    if held is not None:
        yield held


async def _plain(backend: Backend, part: BlobPart) -> AsyncGenerator[bytes, None]:
    """A blob's bytes with only their length checked (the caller hashes the layer)."""
    reader = await open_part(backend, part)
    sent = 0
    try:
        async for chunk in reader:
            sent += len(chunk)
            if sent > part.length:
                raise ArchiveError(f"blob {part.digest} is larger than its descriptor says")
            yield chunk
    finally:
        await reader.close()
    if sent != part.length:
        raise ArchiveError(f"blob {part.digest} ended after {sent} of {part.length} bytes")


async def stream_layer(backend: Backend, repo: str, layout: LayerLayout, start: int = 0, end: int | None = None,
                       expected: str | None = None, *, vouched: bool = False) -> AsyncGenerator[bytes, None]:
    """Layer bytes ``[start, end]``. The whole layer with ``expected`` is hashed and its
    last piece sent only once the digest matches; otherwise blobs are checked one by one
    (a range reads each blob it touches whole unless the storage vouches for it), with
    ``vouched`` (the build's one whole pass) as any whole blob read is; a virtual blob's
    part is read through its own ``read``, which checks what it makes. Raises
    ``RegistryError(UNAVAILABLE)`` on a mismatch or a storage failure: the caller must
    not end cleanly."""
    end = layout.size - 1 if end is None else end
    hasher = hashlib.sha256() if expected and start == 0 and end == layout.size - 1 else None
    held: bytes | None = None
    try:
        for part in segment_parts(layout.segments, repo, start, end):
            if isinstance(part, bytes):
                source = _literal(part)
            elif isinstance(part, VirtualPart):
                source = read_virtual(part)  # checks itself: only its window is made
            elif hasher is not None:
                source = _plain(backend, part)  # the layer's digest covers it
            elif vouched and part.whole:
                source = read_part(await open_part(backend, part), part)
            else:
                source = _slice(backend, part)
            async with contextlib.aclosing(source):
                async for chunk in source:
                    if hasher is not None:
                        await _hash(hasher, chunk)
                    if held is not None:
                        yield held
                    held = chunk
    except ArchiveError as exc:
        raise _unavailable(str(exc)) from None
    except RegistryError as exc:
        raise _unavailable(f"a thin-package blob of {repo}: {exc.message}") from None
    if hasher is not None and f"sha256:{hasher.hexdigest()}" != expected:
        raise _unavailable(f"the synthesised layer {expected} does not match its recorded digest: "
                           "a thin-package blob changed in the storage")
    if held is not None:
        yield held


# -- serving ------------------------------------------------------------------------
@dataclass(frozen=True)
class RunnableLayer:
    """A recorded synthesised layer, laid out again from its source manifest."""

    repository: str
    digest: str
    layout: LayerLayout
    backend: Backend

    @property
    def size(self) -> int:
        return self.layout.size

    def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        return stream_layer(self.backend, self.repository, self.layout, start, end, self.digest)


@dataclass(frozen=True)
class HeldBlob:
    """A runnable image's config, held in the metadata store."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        yield self.data[start : len(self.data) if end is None else end + 1]


class Runnable:
    """Builds runnable images (``build``, ``tag``) and serves them (``RegistryService.virtual``):
    manifests and configs from the metadata store, the package layer synthesised; and
    serves licensed images' sealed layers (``sealed.py``), which are made the same way."""

    def __init__(self, service: RegistryService, store: BuildStore, sealed: SealedLayers) -> None:
        self.service = service
        self.store = store
        self.sealed = sealed

    async def manifest(self, repo: str, reference: str) -> ManifestData | None:
        """A runnable image's manifest (or index) by tag or digest."""
        digest = reference if is_digest(reference) else await self.store.runnable_tag(repo, reference)
        held = await self.store.runnable_object(repo, digest) if digest else None
        if held is None or held[0] not in _MANIFESTS:
            return None
        return ManifestData(digest, held[0], held[1])  # type: ignore[arg-type]

    async def tags(self, repo: str) -> list[str]:
        return await self.store.runnable_tags(repo)

    async def find(self, repo: str, digest: str) -> VirtualBlob | None:
        """The synthesised layer (while its source manifest is in ``repo``), a held
        config, or a licensed image's sealed layer ``digest`` of ``repo``; None for any
        other digest."""
        row = await self.store.runnable_layer(repo, digest)
        if row is None:
            held = await self.store.runnable_object(repo, digest)
            if held is not None and held[0] not in _MANIFESTS:
                return HeldBlob(held[1])
            return await self.sealed.find(repo, digest)
        try:
            thin = await self.service.get_manifest(repo, row["package_digest"])
        except RegistryError as exc:
            if exc.error in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                return None  # collected or deleted: so is the layer
            raise
        if sha256_digest(thin.data) != row["package_digest"]:
            raise _unavailable(f"the storage returned another manifest for {row['package_digest']}")
        try:
            layout = layer_layout(thin)
        except LayoutError as exc:
            raise _unavailable(f"the synthesised layer {digest} can't be laid out: {exc}") from None
        if layout.size != row["size"]:
            raise _unavailable(f"the synthesised layer {digest} is {layout.size} bytes, recorded {row['size']}")
        return RunnableLayer(repo, digest, layout, self.service.backend)

    async def segments(self, repo: str, digest: str) -> tuple[list[Segment], int] | None:
        """For the archive (``archive.Synthetic``): the parts and size of a blob ``find``
        serves that is not in the storage, or None for a stored blob. The package layer is
        laid out from its thin blobs (their ranges read as asked), a config is literal
        bytes, and any other virtual blob is one segment read through its own ``read``."""
        found = await self.find(repo, digest)
        if found is None:
            return None
        if isinstance(found, RunnableLayer):
            return found.layout.segments, found.size
        if isinstance(found, HeldBlob):
            return [Segment(0, found.size, data=found.data)] if found.size else [], found.size
        return [Segment(0, found.size, digest=digest, virtual=found)] if found.size else [], found.size

    # -- building -------------------------------------------------------------------
    async def build(self, repo: str, thin: ManifestData, build_id: str,
                    images: Sequence[tuple[ManifestData, Sequence[ManifestData]]],
                    config_of: Callable[[str, str], Awaitable[bytes]]) -> tuple[dict[str, Any], list[ManifestData]]:
        """Record the layer of ``thin`` and one runnable image (by digest) per licensed
        runtime image ``(root, image manifests)``; returns the layer's facts and the
        runnable roots, in order (tagged later, by ``tag``)."""
        try:
            layout = layer_layout(thin)
        except LayoutError as exc:
            raise BuildError(f"the runnable image's package layer: {exc}") from None
        hasher = hashlib.sha256()
        try:
            async for chunk in stream_layer(self.service.backend, repo, layout, vouched=True):
                await _hash(hasher, chunk)
        except RegistryError as exc:
            raise BuildError(f"the runnable image's package layer: {exc.message}") from None
        digest = f"sha256:{hasher.hexdigest()}"
        await self.store.record_runnable(repo, digest, layout.size, thin.digest, build_id)
        roots = []
        for root, children in images:
            made = {child.digest: await self._image(repo, child, digest, layout.size, config_of) for child in children}
            if root.digest in made:
                roots.append(made[root.digest])
                continue
            doc = json.loads(root.data)
            doc["manifests"] = [{**m, "digest": made[m["digest"]].digest, "size": len(made[m["digest"]].data),
                                 "mediaType": made[m["digest"]].media_type}
                                for m in doc.get("manifests") or [] if m.get("digest") in made]
            roots.append(await self._hold(repo, root.media_type, _json(doc)))
        return {"digest": digest, "size": layout.size, "entries": len(layout.names)}, roots

    async def tag(self, repo: str, tag: str, digest: str) -> None:
        await self.store.tag_runnable(repo, tag, digest)

    async def _hold(self, repo: str, media_type: str, data: bytes) -> ManifestData:
        digest = sha256_digest(data)
        await self.store.hold_runnable(repo, digest, media_type, data)
        return ManifestData(digest, media_type, data)

    async def _image(self, repo: str, image: ManifestData, digest: str, size: int,
                     config_of: Callable[[str, str], Awaitable[bytes]]) -> ManifestData:
        doc = json.loads(image.data)
        config = json.loads(await config_of(repo, doc["config"]["digest"]))
        config["rootfs"]["diff_ids"] = [*config["rootfs"]["diff_ids"], digest]  # uncompressed: digest = diff_id
        if isinstance(config.get("history"), list):
            config["history"].append({"created_by": "algomint full build: the package at /" + PACKAGE_DIR,
                                      "comment": f"/{DESCRIPTOR_FILE} and /{PACKAGE_DIR}/"})
        inner = config.setdefault("config", {})
        if isinstance(inner, dict):
            inner["Labels"] = {**(inner.get("Labels") or {}), LABEL_PACKAGE_DIR: "/" + PACKAGE_DIR}
        held = await self._hold(repo, doc["config"].get("mediaType") or mt.OCI_CONFIG, _json(config))
        oci = image.media_type == mt.OCI_MANIFEST
        out = copy.deepcopy(doc)
        out["config"] = {**out["config"], "digest": held.digest, "size": len(held.data)}
        out["layers"] = [*out["layers"], {"mediaType": OUTPUT_MEDIA_TYPES["tar"][0 if oci else 1],
                                          "digest": digest, "size": size}]
        return await self._hold(repo, image.media_type, _json(out))


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
