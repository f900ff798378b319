"""Blob reads and deletes (distribution-spec §Pulling blobs, §Deleting blobs)."""

from __future__ import annotations

from aiohttp import web

from ...oci.errors import Errors, RegistryError
from ...service.registry import VirtualBlob
from ..state import REGISTRY
from ..streaming import parse_range, send_blob, send_stream
from .common import digest_param, repo_name, usable_range


async def get_blob(request: web.Request) -> web.StreamResponse:
    repo = repo_name(request)
    digest = digest_param(request.match_info["digest"])
    registry = request.app[REGISTRY]
    backend = registry.backend
    headers = {
        "Docker-Content-Digest": digest,
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }
    try:
        info = await backend.stat_blob(repo, digest)
    except RegistryError as exc:
        virtual = await registry.virtual.find(repo, digest) \
            if exc.error is Errors.BLOB_UNKNOWN and registry.virtual is not None else None
        if virtual is None:
            raise
        return await _send_virtual(request, virtual, headers)
    byte_range = parse_range(usable_range(request.headers.get("Range")), info.size)
    if request.method == "HEAD":
        return web.Response(status=200, headers={**headers, "Content-Length": str(info.size)})
    if byte_range is None:
        reader = await backend.open_blob(repo, digest)
        return await send_blob(request, reader, headers)
    reader = await backend.open_blob(repo, digest, byte_range.start, byte_range.length)
    headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{info.size}"
    return await send_blob(request, reader, headers, status=206)


async def _send_virtual(request: web.Request, blob: VirtualBlob, headers: dict[str, str]) -> web.StreamResponse:
    """A blob made on request (``RegistryService.virtual``), whole or one range."""
    byte_range = parse_range(usable_range(request.headers.get("Range")), blob.size)
    start, end, status = (0, blob.size - 1, 200) if byte_range is None else (byte_range.start, byte_range.end, 206)
    if byte_range is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
    length = end - start + 1 if blob.size else 0
    if request.method == "HEAD":
        return web.Response(status=200, headers={**headers, "Content-Length": str(blob.size)})
    return await send_stream(request, blob.read(start, end), headers, status=status, length=length)


async def delete_blob(request: web.Request) -> web.Response:
    repo = repo_name(request)
    digest = digest_param(request.match_info["digest"])
    await request.app[REGISTRY].backend.delete_blob(repo, digest)
    return web.Response(status=202, headers={"Content-Length": "0"})
