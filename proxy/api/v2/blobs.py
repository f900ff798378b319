"""Blob reads and deletes (distribution-spec §Pulling blobs, §Deleting blobs)."""

from __future__ import annotations

from aiohttp import web

from ..state import REGISTRY
from ..streaming import parse_range, send_blob
from .common import digest_param, repo_name, usable_range


async def get_blob(request: web.Request) -> web.StreamResponse:
    repo = repo_name(request)
    digest = digest_param(request.match_info["digest"])
    backend = request.app[REGISTRY].backend
    info = await backend.stat_blob(repo, digest)
    headers = {
        "Docker-Content-Digest": digest,
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }
    byte_range = parse_range(usable_range(request.headers.get("Range")), info.size)
    if request.method == "HEAD":
        return web.Response(status=200, headers={**headers, "Content-Length": str(info.size)})
    if byte_range is None:
        reader = await backend.open_blob(repo, digest)
        return await send_blob(request, reader, headers)
    reader = await backend.open_blob(repo, digest, byte_range.start, byte_range.length)
    headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{info.size}"
    return await send_blob(request, reader, headers, status=206)


async def delete_blob(request: web.Request) -> web.Response:
    repo = repo_name(request)
    digest = digest_param(request.match_info["digest"])
    await request.app[REGISTRY].backend.delete_blob(repo, digest)
    return web.Response(status=202, headers={"Content-Length": "0"})
