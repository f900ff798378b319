"""Manifests (distribution-spec §Pulling manifests, §Pushing manifests, §Deleting)."""

from __future__ import annotations

from aiohttp import web

from ...oci.reference import is_digest
from ..state import REGISTRY
from ..streaming import read_body
from .common import actor, location, repo_name


def _accept(request: web.Request) -> list[str]:
    values: list[str] = []
    for header in request.headers.getall("Accept", []):
        values.extend(part.split(";", 1)[0].strip() for part in header.split(","))
    return [v for v in values if v]


def _immutable(reference: str) -> str:
    # A digest-addressed manifest never changes; a tag may move at any time.
    return "max-age=31536000, immutable" if is_digest(reference) else "no-cache"


async def get_manifest(request: web.Request) -> web.Response:
    repo = repo_name(request)
    reference = request.match_info["reference"]
    service = request.app[REGISTRY]
    if request.method == "HEAD":
        info = await service.stat_manifest(repo, reference, _accept(request))
        return web.Response(
            headers={
                "Content-Type": info.media_type,
                "Content-Length": str(info.size),
                "Docker-Content-Digest": info.digest,
                "ETag": f'"{info.digest}"',
                "Cache-Control": _immutable(reference),
            }
        )
    item = await service.get_manifest(repo, reference, _accept(request))
    if request.headers.get("If-None-Match") == f'"{item.digest}"':
        return web.Response(status=304, headers={"ETag": f'"{item.digest}"', "Docker-Content-Digest": item.digest})
    return web.Response(
        body=item.data,
        headers={
            "Content-Type": item.media_type,
            "Docker-Content-Digest": item.digest,
            "ETag": f'"{item.digest}"',
            "Cache-Control": _immutable(reference),
        },
    )


async def put_manifest(request: web.Request) -> web.Response:
    repo = repo_name(request)
    reference = request.match_info["reference"]
    service = request.app[REGISTRY]
    data = await read_body(request, service.max_manifest_bytes)
    stored = await service.put_manifest(repo, reference, data, request.headers.get("Content-Type"), actor(request))
    headers = {
        "Location": location(request, f"/v2/{repo}/manifests/{stored.digest}"),
        "Docker-Content-Digest": stored.digest,
        "Content-Length": "0",
    }
    if stored.manifest.subject is not None:
        headers["OCI-Subject"] = stored.manifest.subject.digest
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request) -> web.Response:
    repo = repo_name(request)
    await request.app[REGISTRY].delete_manifest(repo, request.match_info["reference"], actor(request))
    return web.Response(status=202, headers={"Content-Length": "0"})
