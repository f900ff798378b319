"""The thin package in memory, and reading/writing it from/to the registry as one operation.

A thin package is an OCI image manifest whose config blob is JSON (the algorithm
descriptor, or a plugin's config) and whose layers are files named by their
``org.opencontainers.image.title`` annotation (the ORAS convention). Thin packages are
small (KB), so the model holds them in memory — bounded by a cap (default 64 MiB) checked
before anything is downloaded and after every change.

Writing is deterministic: canonical JSON (sorted keys, compact separators), layers sorted
by path, no timestamps unless the package carries them. Same content -> same manifest
digest; a tag that already points at that digest is not written again.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from proxy import safejson
from proxy.oci import mediatypes as mt
from proxy.oci.errors import Errors, RegistryError
from proxy.oci.manifest import Descriptor, ParsedManifest, parse_manifest
from proxy.service.registry import BlobContentError, RegistryService

__all__ = [
    "ANNOTATION_CHAIN",
    "ANNOTATION_PLUGINS",
    "ANNOTATION_SOURCE",
    "ANNOTATION_SOURCE_REPOSITORY",
    "DEFAULT_CAP",
    "DEFAULT_FILE_MEDIA_TYPE",
    "LoadedPackage",
    "Package",
    "PackageError",
    "PackageFile",
    "PackageTooLarge",
    "WriteResult",
    "build_manifest",
    "canonical_json",
    "read_package",
    "validate_path",
    "write_package",
]

DEFAULT_CAP = 64 * 1024 * 1024
DEFAULT_FILE_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"  # what oras uses for plain files
MAX_PATH = 1024

# Provenance recorded on every business package (DESIGN §4).
ANNOTATION_CHAIN = "io.algomint.chain"
ANNOTATION_PLUGINS = "io.algomint.plugins"  # "plugins/a@sha256:…,plugins/b@sha256:…", in chain order
ANNOTATION_SOURCE = "io.algomint.source.digest"
ANNOTATION_SOURCE_REPOSITORY = "io.algomint.source.repository"

_CHUNK = 1024 * 1024
_IO_CONCURRENCY = 8


class PackageError(Exception):
    """A package that cannot be read, changed or written; ``reason`` is for people."""

    def __init__(self, reason: str, detail: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class PackageTooLarge(PackageError):
    def __init__(self, size: int, cap: int, what: str = "package") -> None:
        super().__init__(f"{what} is {size} bytes, over the {cap}-byte package cap", {"size": size, "cap": cap})
        self.size, self.cap = size, cap


def canonical_json(value: Any) -> bytes:
    """The one JSON encoding packages are written with: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def validate_path(path: Any, where: str = "path") -> str:
    """A package file path: relative, ``/``-separated, no ``.``/``..``/empty components."""
    if not isinstance(path, str) or not path:
        raise PackageError(f"{where}: must be a non-empty string")
    if len(path) > MAX_PATH:
        raise PackageError(f"{where}: longer than {MAX_PATH} characters", {"path": path[:100]})
    if "\x00" in path or "\\" in path:
        raise PackageError(f"{where}: contains NUL or backslash", {"path": path})
    if path.startswith("/"):
        raise PackageError(f"{where}: absolute path {path!r} is not allowed", {"path": path})
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise PackageError(f"{where}: path traversal or empty component in {path!r}", {"path": path})
    return path


@dataclass(frozen=True)
class PackageFile:
    """One file: its bytes, layer media type and annotations other than the title."""

    path: str
    data: bytes
    media_type: str = DEFAULT_FILE_MEDIA_TYPE
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def layer(self) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            "annotations": {**self.annotations, mt.ANNOTATION_TITLE: self.path},
        }


@dataclass
class Package:
    """A thin package: config JSON (``descriptor``), files by path, manifest annotations."""

    descriptor: dict[str, Any]
    files: dict[str, PackageFile] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    config_media_type: str = mt.ALGORITHM_CONFIG
    subject: Descriptor | None = None

    def copy(self) -> "Package":
        """An independent copy (file bytes are immutable and shared)."""
        return Package(copy.deepcopy(self.descriptor), dict(self.files), dict(self.annotations),
                       self.artifact_type, self.config_media_type, self.subject)

    def put(self, path: str, data: bytes, media_type: str | None = None, annotations: dict[str, str] | None = None) -> None:
        """Add a file, or replace the same-named one (keeping its media type by default)."""
        validate_path(path)
        old = self.files.get(path)
        self.files[path] = PackageFile(
            path, data,
            media_type or (old.media_type if old else DEFAULT_FILE_MEDIA_TYPE),
            annotations if annotations is not None else (old.annotations if old else {}),
        )

    def remove(self, path: str) -> None:
        self.files.pop(path, None)

    def config_bytes(self) -> bytes:
        return canonical_json(self.descriptor)

    @property
    def size(self) -> int:
        return len(self.config_bytes()) + sum(len(f.data) for f in self.files.values())

    def check(self, cap: int = DEFAULT_CAP) -> "Package":
        """Raise ``PackageError`` unless the package is well-formed and within ``cap``."""
        if not isinstance(self.descriptor, dict):
            raise PackageError("descriptor must be a JSON object")
        for name, value in self.annotations.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise PackageError("annotations must map strings to strings", {"annotation": str(name)[:100]})
        for path, file in self.files.items():
            validate_path(path, "file")
            if file.path != path:
                raise PackageError(f"file {path!r} is stored under another name {file.path!r}")
        size = self.size
        if size > cap:
            raise PackageTooLarge(size, cap)
        return self

    def digest(self) -> str:
        """Digest of the content (descriptor, files, annotations), independent of subject and
        artifact type: what caches of plugin results are keyed by."""
        doc = {
            "descriptor": self.descriptor,
            "annotations": self.annotations,
            "files": [
                [f.path, f.media_type, f.digest, f.annotations] for f in sorted(self.files.values(), key=lambda f: f.path)
            ],
        }
        return "sha256:" + hashlib.sha256(canonical_json(doc)).hexdigest()


def build_manifest(package: Package) -> bytes:
    """The canonical OCI image manifest for ``package`` (deterministic bytes)."""
    config = package.config_bytes()
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {
            "mediaType": package.config_media_type,
            "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
            "size": len(config),
        },
        "layers": [f.layer() for f in sorted(package.files.values(), key=lambda f: f.path)],
    }
    if package.artifact_type:
        doc["artifactType"] = package.artifact_type
    if package.subject is not None:
        doc["subject"] = package.subject.to_json()
    if package.annotations:
        doc["annotations"] = dict(package.annotations)
    return canonical_json(doc)


# -- reading --------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedPackage:
    """A package as read, with the manifest it came from."""

    package: Package
    digest: str
    media_type: str
    size: int
    manifest: ParsedManifest

    @property
    def descriptor(self) -> Descriptor:
        """The manifest's descriptor, for ``subject`` fields."""
        return Descriptor(self.media_type, self.digest, self.size)


async def read_blob(service: RegistryService, repo: str, descriptor: Descriptor, limit: int = DEFAULT_CAP) -> bytes:
    """A package's blob read whole, checked against its descriptor's size and digest."""
    try:
        return await service.read_small_blob(repo, descriptor.digest, limit, size=descriptor.size)
    except BlobContentError as exc:
        raise PackageError(exc.message, {"digest": descriptor.digest, "size": descriptor.size}) from None


async def read_package(service: RegistryService, repo: str, reference: str, cap: int = DEFAULT_CAP) -> LoadedPackage:
    """Read the thin package ``repo:reference`` (tag or digest), verified and within ``cap``."""
    try:
        item = await service.get_manifest(repo, reference)
    except RegistryError as exc:
        if exc.error in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
            raise PackageError(f"{repo}:{reference} not found", {"repository": repo, "reference": reference}) from None
        raise
    manifest = parse_manifest(item.data, item.media_type)
    if manifest.is_index or manifest.config is None:
        raise PackageError(f"{repo}@{item.digest} is an index, not a thin package", {"mediaType": item.media_type})
    declared = manifest.config.size + sum(layer.size for layer in manifest.layers)
    if declared > cap:
        raise PackageTooLarge(declared, cap)
    paths: list[str] = []
    for i, layer in enumerate(manifest.layers):
        title = (layer.annotations or {}).get(mt.ANNOTATION_TITLE)
        if title is None:
            raise PackageError(f"layers[{i}] has no {mt.ANNOTATION_TITLE} annotation: not a file", {"layer": i})
        paths.append(validate_path(title, f"layers[{i}] title"))
    if len(set(paths)) != len(paths):
        raise PackageError("two layers carry the same file path", {"paths": sorted(p for p in paths if paths.count(p) > 1)})

    limit = asyncio.Semaphore(_IO_CONCURRENCY)

    async def fetch(descriptor: Descriptor) -> bytes:
        async with limit:
            return await read_blob(service, repo, descriptor)

    blobs = await asyncio.gather(fetch(manifest.config), *(fetch(layer) for layer in manifest.layers))
    try:
        descriptor = safejson.loads(blobs[0])
    except safejson.JsonError as exc:
        raise PackageError(f"config blob is not valid JSON: {exc}") from None
    if not isinstance(descriptor, dict):
        raise PackageError("config blob must be a JSON object")
    files = {
        path: PackageFile(
            path, data, layer.media_type,
            {k: v for k, v in (layer.annotations or {}).items() if k != mt.ANNOTATION_TITLE},
        )
        for path, layer, data in zip(paths, manifest.layers, blobs[1:])
    }
    package = Package(descriptor, files, dict(manifest.annotations), manifest.artifact_type,
                      manifest.config.media_type, manifest.subject)
    return LoadedPackage(package, item.digest, item.media_type, len(item.data), manifest)


# -- writing --------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteResult:
    digest: str
    size: int
    manifest: bytes
    written: bool  # False: the tag already pointed at this exact manifest


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), _CHUNK):
        yield data[start : start + _CHUNK]
    if not data:
        yield b""


async def _ensure_blob(service: RegistryService, repo: str, digest: str, data: bytes, source_repo: str | None) -> None:
    backend = service.backend
    try:
        await backend.stat_blob(repo, digest)
        return
    except RegistryError as exc:
        if exc.error not in (Errors.BLOB_UNKNOWN, Errors.NAME_UNKNOWN):
            raise
    if source_repo and await backend.mount_blob(repo, digest, source_repo) is not None:
        return
    upload = await backend.start_upload(repo)
    try:
        await backend.finish_upload(repo, upload.upload_id, digest, _chunks(data))
    except BaseException:
        try:
            await backend.cancel_upload(repo, upload.upload_id)
        except (RegistryError, asyncio.CancelledError):
            pass  # a failed finish may already have discarded it
        raise


async def write_package(
    service: RegistryService,
    repo: str,
    tag: str,
    package: Package,
    *,
    cap: int = DEFAULT_CAP,
    source_repo: str | None = None,
    actor: str | None = "algomint",
) -> WriteResult:
    """Write ``package`` as ``repo:tag``: blobs first (mounted from ``source_repo`` when it
    has them), then the manifest through the registry service (validation, referrers,
    events). Nothing is tagged unless every blob is in place; an identical tag is left alone."""
    package.check(cap)
    data = build_manifest(package)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        current = await service.backend.stat_manifest(repo, tag)
        if current.digest == digest:
            return WriteResult(digest, len(data), data, written=False)
    except RegistryError as exc:
        if exc.error not in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
            raise
    config = package.config_bytes()
    blobs = {"sha256:" + hashlib.sha256(config).hexdigest(): config}
    for file in package.files.values():
        blobs.setdefault(file.digest, file.data)
    limit = asyncio.Semaphore(_IO_CONCURRENCY)

    async def ensure(digest_: str, blob: bytes) -> None:
        async with limit:
            await _ensure_blob(service, repo, digest_, blob, source_repo)

    await asyncio.gather(*(ensure(d, b) for d, b in blobs.items()))
    stored = await service.put_manifest(repo, tag, data, mt.OCI_MANIFEST, actor)
    return WriteResult(stored.digest, len(data), data, written=True)
