"""``GET /v2/`` (distribution-spec §Determining support)."""

from aiohttp import web


async def version_check(request: web.Request) -> web.Response:
    return web.json_response({})
