"""Tags, catalog and referrers listings (distribution-spec §Listing tags, §Referrers)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from aiohttp import web

from ...oci import mediatypes as mt
from ...service.referrers import referrers_document
from ..state import REGISTRY
from .common import digest_param, page_size, repo_name


def _link(path: str, n: int | None, last: str | None) -> dict[str, str]:
    if last is None or n is None:
        return {}
    return {"Link": f'<{path}?{urlencode({"n": n, "last": last})}>; rel="next"'}


async def tags(request: web.Request) -> web.Response:
    repo = repo_name(request)
    n = page_size(request)
    page, next_last = await request.app[REGISTRY].tags(repo, n, request.query.get("last"))
    return web.json_response({"name": repo, "tags": page}, headers=_link(request.path, n, next_last))


async def catalog(request: web.Request) -> web.Response:
    n = page_size(request)
    page, next_last = await request.app[REGISTRY].catalog(n, request.query.get("last"))
    return web.json_response({"repositories": page}, headers=_link(request.path, n, next_last))


# Referrers per page when the client names no ``n``: an index of this many stays well
# under the 4 MiB clients accept for a manifest (~250 bytes per descriptor).
REFERRERS_PAGE = 1000


async def referrers(request: web.Request) -> web.Response:
    repo = repo_name(request)
    digest = digest_param(request.match_info["digest"])
    artifact_type = request.query.get("artifactType")
    n = page_size(request)
    if n is None:
        n = REFERRERS_PAGE
    last = request.query.get("last")
    found, next_last = await request.app[REGISTRY].list_referrers(repo, digest, artifact_type, n, last)
    # Exactly the index media type: clients compare it whole, so no charset parameter.
    headers = {"Content-Type": mt.OCI_INDEX}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    if next_last is not None:
        # The spec's Link: the next page keeps the filter.
        query = {"n": n, "last": next_last} | ({"artifactType": artifact_type} if artifact_type is not None else {})
        headers["Link"] = f'<{request.path}?{urlencode(query)}>; rel="next"'
    return web.Response(body=json.dumps(referrers_document(found)).encode(), headers=headers)
