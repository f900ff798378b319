"""Seal the model files a package carries itself (embedded algorithms).

A thin package's files are layers named by their ``org.opencontainers.image.title``.
Every file whose path matches the package's model globs is streamed from the storage
through the envelope (``packer.licensing.envelope``) into a new blob, one chunk at a
time, so memory does not grow with the file; the source is checked against its digest
and size as it is read, and a mismatch discards the upload. Other files keep their
blob (binaries are delivered byte for byte). The license file goes in as one more file,
at the license kind's ``license_path``, replacing any file the package had there: only a
full build writes a license.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from proxy.backend import Backend
from proxy.oci import mediatypes as mt
from proxy.oci.errors import RegistryError

from ..licensing.envelope import Encryptor
from ..package import DEFAULT_FILE_MEDIA_TYPE, PackageError, validate_path
from .names import ANNOTATION_ENCRYPTED, ENVELOPE_FORMAT, BuildError

__all__ = ["SealedFiles", "UNPACK_ANNOTATION", "check_no_clear_copies", "model_layers", "seal_blob", "seal_files"]

# oras marks a layer that is a directory packed as tar+gzip; its title is the directory.
UNPACK_ANNOTATION = "io.deis.oras.content.unpack"


@dataclass
class SealedFiles:
    layers: list[dict[str, Any]]  # the licensed package's layers, in the source order
    encrypted: list[str] = field(default_factory=list)  # file paths now in envelopes
    digests: dict[int, str] = field(default_factory=dict)  # source position -> sealed blob


def _title(layer: dict[str, Any]) -> str | None:
    value = (layer.get("annotations") or {}).get(mt.ANNOTATION_TITLE)
    return value if isinstance(value, str) else None


def model_layers(layers: list[dict[str, Any]], select: Callable[[str], bool]) -> list[int]:
    """Positions of the layers that are model files; a model inside a packed directory
    can't be sealed file by file, so the build refuses it rather than ship it in clear."""
    out = []
    for position, layer in enumerate(layers):
        title = _title(layer)
        if title is None or not select(title):
            continue
        try:
            validate_path(title, f"layer {position} title")
        except PackageError as exc:
            raise BuildError(f"package file {title!r}: {exc.reason}") from None
        if (layer.get("annotations") or {}).get(UNPACK_ANNOTATION):
            raise BuildError(f"package file {title!r} is a packed directory ({UNPACK_ANNOTATION}); "
                             "push model files one by one so each can be encrypted")
        out.append(position)
    return out


def check_no_clear_copies(layers: list[dict[str, Any]], positions: list[int]) -> None:
    """A model file must not also ride along in the clear under another name (a plugin
    that copied it): the same blob in a file the build does not seal fails the build."""
    models = {layers[p]["digest"]: _title(layers[p]) for p in positions}
    for position, layer in enumerate(layers):
        if position not in positions and layer.get("digest") in models:
            raise BuildError(f"package file {_title(layer)!r} is a copy of the model file "
                             f"{models[layer['digest']]!r} that the models globs do not cover; it would be "
                             "delivered in the clear (remove it, or name it in models)")


async def seal_files(backend: Backend, repo: str, layers: list[dict[str, Any]], positions: list[int],
                     key: bytes, key_id: bytes, chunk_size: int, license_path: str | None,
                     license_blob: tuple[str, int] | None,
                     progress: Callable[[int, int], None] | None = None) -> SealedFiles:
    """The package's layers with the files at ``positions`` sealed (new blobs in ``repo``)
    and, when ``license_blob`` (digest, size) is given, the license file at ``license_path``."""
    out: list[dict[str, Any]] = []
    sealed = SealedFiles(out)
    chosen = set(positions)
    for position, layer in enumerate(layers):
        title = _title(layer)
        if license_blob is not None and title == license_path:
            continue  # only the build's own license file may sit there
        if position not in chosen:
            out.append(layer)
            continue
        digest, size = await seal_blob(backend, repo, layer["digest"], int(layer["size"]), key, key_id, chunk_size,
                                       (lambda n, p=position: progress(p, n)) if progress else None)
        entry = {k: v for k, v in layer.items() if k != "urls"}
        entry.update(digest=digest, size=size,
                     annotations={**(layer.get("annotations") or {}), ANNOTATION_ENCRYPTED: ENVELOPE_FORMAT})
        out.append(entry)
        sealed.encrypted.append(title or "")
        sealed.digests[position] = digest
    if license_blob is not None and license_path is not None:
        out.append({"mediaType": DEFAULT_FILE_MEDIA_TYPE, "digest": license_blob[0], "size": license_blob[1],
                    "annotations": {mt.ANNOTATION_TITLE: license_path}})
    return sealed


async def seal_blob(backend: Backend, repo: str, digest: str, size: int, key: bytes, key_id: bytes,
                    chunk_size: int, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Stream blob ``digest`` of ``repo`` through a fresh envelope into a new blob of
    ``repo``; returns its (digest, size). Nothing is published unless the source read
    back whole and matching its digest."""
    reader = await backend.open_blob(repo, digest)
    failure: list[str] = []
    out_hash = hashlib.sha256()
    written = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal written
        source = hashlib.sha256()
        seen = 0
        encryptor = Encryptor(key, key_id, size, chunk_size)
        async for piece in reader:
            seen += len(piece)
            if seen > size:
                failure.append(f"is longer than its recorded {size} bytes")
                return  # a short upload that is never finished
            source.update(piece)
            sealed = encryptor.update(piece)
            if progress:
                progress(len(piece))
            if sealed:
                out_hash.update(sealed)
                written += len(sealed)
                yield bytes(sealed)
        if seen != size or "sha256:" + source.hexdigest() != digest:
            failure.append(f"read back {seen} bytes that do not match its digest")
            return
        reader.confirm()
        tail = encryptor.finish()
        out_hash.update(tail)
        written += len(tail)
        yield tail

    session = await backend.start_upload(repo)
    upload_id = session.upload_id
    try:
        status = await backend.write_upload(repo, upload_id, chunks())
        upload_id = status.upload_id
        if failure:
            raise BuildError(f"package file blob {digest} in {repo} {failure[0]}")
        new = "sha256:" + out_hash.hexdigest()
        await backend.finish_upload(repo, upload_id, new)
        return new, written
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await backend.cancel_upload(repo, upload_id)
        if isinstance(exc, RegistryError):
            raise BuildError(f"package file blob {digest} in {repo}: storage failed: {exc.message}") from None
        raise
    finally:
        await reader.close()
