"""``GET /api/v1/archive/<repository>:<tag>`` (or ``@<digest>``): an artifact as one tar.

Answers ``HEAD``, ``Range`` (one range; malformed, multi-range or past-the-end: 416),
``If-Range`` and ``If-None-Match`` against the ``ETag`` (the root digest), and
``?compress=zstd`` (a zstd stream compressed per request: no length known up front and
``Accept-Ranges: none``, a ``Range`` is ignored and the whole stream sent), and
``?platform=linux/arm64`` (the runtime images of one platform only; a malformed name is
a 400, a platform the artifact does not have a 404 listing those it has)."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from typing import AsyncGenerator

import zstandard
from aiohttp import web

from packer.archive import (
    ArchiveError,
    ArchivePlan,
    BlobPart,
    PlatformUnknown,
    VirtualPart,
    iter_parts,
    open_part,
    plan_archive,
    read_part,
    read_virtual,
    stream_archive,
)
from packer.platform import Platform, PlatformError
from proxy.backend import Backend
from proxy.oci.errors import RegistryError
from proxy.oci.reference import DIGEST_RE, MAX_NAME_LENGTH, NAME_RE, TAG_RE, parse_reference
from proxy.service.policy import Action

from ..state import CONFIG, REGISTRY
from ..streaming import parse_range, send_direct, send_stream
from .errors import ApiError
from .fullbuilds import FULL_BUILDS
from .router import Access, ApiRouter, Query, authorize, enum_query

__all__ = ["router"]

router = ApiRouter("archive")


# What ``_target`` accepts, as the OpenAPI document states it (the reference grammar).
_TARGET_SCHEMA = {
    "type": "string", "maxLength": MAX_NAME_LENGTH + 200,
    "pattern": rf"^{NAME_RE.pattern[1:-1]}(?::{TAG_RE.pattern[1:-1]}|@{DIGEST_RE.pattern[1:-1]})$",
}


def _target(request: web.Request) -> tuple[str, str]:
    raw = request.match_info["target"]
    try:
        ref = parse_reference(raw, default_tag=None)
    except RegistryError as exc:
        raise ApiError(400, f"not a repository reference: {exc.message}", {"target": raw[:300]}) from None
    if ref.tag is None and ref.digest is None:
        raise ApiError(400, "name a tag or a digest: <repository>:<tag> or <repository>@<digest>", {"target": raw[:300]})
    return ref.name, ref.digest or ref.tag  # type: ignore[return-value]


def _filename(plan: ArchivePlan, reference: str, extension: str = ".tar") -> str:
    """``face-recog_1.0-soft.tar``: the last path segment, ``_``, the tag (a digest's ``:``
    becomes ``-``). Both come from the reference grammar ([a-z0-9._-], [\\w.-]), so the name
    needs no quoting and is safe for ``curl -OJ`` to write in the current directory."""
    base = posixpath.basename(plan.repository)
    platform = f"_{plan.platform.slug}" if plan.platform else ""
    return f"{base}_{reference.replace(':', '-')}{platform}{extension}"


class _Blob:
    """One blob range of the archive, sent from a worker thread when the client
    connection allows it (``send_direct``), else streamed through the event loop in
    batches. Whole blobs the storage doesn't vouch for are hashed."""

    def __init__(self, backend: Backend, part: BlobPart) -> None:
        self.backend, self.part = backend, part

    async def send(self, request: web.Request, response: web.StreamResponse) -> int:
        part = self.part
        reader = await open_part(self.backend, part)
        try:
            verify = part.whole and not reader.verified
            if await send_direct(request, reader, part.digest if verify else None):
                if verify:
                    reader.confirm()
                return part.length
            sent = 0
            async for chunk in read_part(reader, part):  # hashes and confirms on its own
                await response.write(chunk)
                sent += len(chunk)
            return sent
        finally:
            await reader.close()


async def _parts(backend: Backend, plan: ArchivePlan, start: int, end: int) -> AsyncGenerator[bytes | _Blob, None]:
    for part in iter_parts(plan, start, end):
        if isinstance(part, VirtualPart):
            # Made on request: no file to hand to a worker thread, so through the loop.
            async with contextlib.aclosing(read_virtual(part)) as chunks:
                async for chunk in chunks:
                    yield chunk
        else:
            yield part if isinstance(part, bytes) else _Blob(backend, part)


async def _zstd(chunks: AsyncGenerator[bytes, None], threads: int) -> AsyncGenerator[bytes, None]:
    compressor = zstandard.ZstdCompressor(level=3, threads=threads, write_checksum=True).compressobj()
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            out = await asyncio.to_thread(compressor.compress, chunk)
            if out:
                yield out
    yield compressor.flush()


@router.route("GET", "/archive/{target:.+}", action=Access.REPOSITORY,
              summary="Stream an artifact (generic, business thin or full package) as an OCI image-layout tar",
              query={"compress": enum_query("zstd: a zstd-compressed stream", ["zstd"]),
                     "platform": Query("one platform's runtime images only: os/arch[/variant][+feature...], "
                                       "e.g. linux/arm64 or linux/amd64+cuda12 (default: every platform)",
                                       {"type": "string", "maxLength": 300})},
              path_params={"target": Query("<repository>:<tag> or <repository>@<digest>", _TARGET_SCHEMA)})
async def get_archive(request: web.Request) -> web.StreamResponse:
    repo, reference = _target(request)
    await authorize(request, Action.PULL, repo, reference)
    compress = request.query.get("compress")
    if compress not in (None, "", "zstd"):
        raise ApiError(400, "compress must be zstd", {"compress": compress[:20]})
    platform = None
    if request.query.get("platform"):
        try:
            platform = Platform.parse(request.query["platform"])
        except PlatformError as exc:
            raise ApiError(400, str(exc), {"platform": request.query["platform"][:100]}) from None
    try:
        # Blobs served without being stored (a runnable full image's package layer, made
        # from the thin package's blobs; any other virtual blob) are laid out from their parts.
        runnable = request.app[FULL_BUILDS].builder.runnable
        plan = await plan_archive(request.app[REGISTRY], repo, reference, platform=platform,
                                  synthetic=lambda digest: runnable.segments(repo, digest))
    except PlatformUnknown as exc:
        raise ApiError(404, str(exc), {"platform": str(exc.platform), "available": exc.available}) from None
    except ArchiveError as exc:
        raise ApiError(422, str(exc)) from None
    backend = request.app[REGISTRY].backend
    immutable = "max-age=31536000, immutable" if "@" in request.match_info["target"] else "no-cache"
    headers = {
        "ETag": plan.etag,
        "Cache-Control": immutable,
        "Content-Disposition": f'attachment; filename="{_filename(plan, reference)}"',
        "X-Algomint-Root-Digest": plan.root.digest,
    }
    if compress == "zstd":
        # Compressed per request: no length is known up front and no byte can be found
        # again without compressing from the start, so Range is ignored and said to be.
        headers.update({"Content-Type": "application/zstd", "ETag": plan.etag[:-1] + '+zstd"',
                        "Accept-Ranges": "none",
                        "Content-Disposition": f'attachment; filename="{_filename(plan, reference, ".tar.zst")}"'})
        if request.method == "HEAD":
            return web.Response(headers=headers)
        threads = request.app[CONFIG].full_builds.threads
        return await send_stream(request, _zstd(stream_archive(backend, plan), threads), headers)

    headers.update({"Content-Type": "application/x-tar", "Accept-Ranges": "bytes"})
    if request.headers.get("If-None-Match") == plan.etag:
        return web.Response(status=304, headers={k: headers[k] for k in ("ETag", "Cache-Control")})
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range != plan.etag:
        range_header = None  # the representation changed: send it whole (RFC 9110 §13.1.5)
    byte_range = parse_range(range_header, plan.size)
    if byte_range is None:
        start, end, status = 0, plan.size - 1, 200
    else:
        start, end, status = byte_range.start, byte_range.end, 206
        headers["Content-Range"] = f"bytes {start}-{end}/{plan.size}"
    length = end - start + 1
    if request.method == "HEAD":
        return web.Response(status=status, headers={**headers, "Content-Length": str(length)})
    return await send_stream(request, _parts(backend, plan, start, end), headers, status=status, length=length)
