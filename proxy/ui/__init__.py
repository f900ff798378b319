"""The web console at ``/ui/``: server-rendered pages over the management API's own
handlers and the same policy, a vendored htmx for live progress, no assets from elsewhere.

``setup_ui(app, routers)`` is called by the composition root after the API is mounted."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Sequence

import aiohttp_jinja2
import jinja2
from aiohttp import web

from ..api.manage.router import ApiRouter
from ..api.state import CONFIG, DATABASE, EVENTS, REGISTRY
from ..auth.permissions import ROLES
from . import account, admin, jobs, plugins, repositories, signin, storage, systems, tokens
from .bridge import BRIDGE, Bridge
from .catalog import RepositoryIndex
from .filters import FILTERS
from .sessions import SessionStore
from .context import SESSIONS, page

__all__ = ["setup_ui"]

_HERE = Path(__file__).parent


@page()
async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/ui/algorithms")


async def _root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/ui/")


def setup_ui(app: web.Application, routers: Sequence[ApiRouter]) -> None:
    """Mount the console unless ``[ui] enabled = false``."""
    config = app[CONFIG].ui
    if not config.enabled:
        return
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True,
                               undefined=jinja2.ChainableUndefined)
    env.filters.update(FILTERS)
    env.globals["role_names"] = sorted(ROLES)
    app[BRIDGE] = Bridge(list(routers))
    app[repositories.REPOSITORIES] = index = RepositoryIndex(app[REGISTRY].backend.list_repositories)
    app[EVENTS].subscribe(index.on_event)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        app[SESSIONS] = await SessionStore.open(app[DATABASE], config.session_idle)
        async with index.running():
            yield

    app.cleanup_ctx.append(lifetime)  # after storage (registered first): the listing and sessions need it open
    app.router.add_get("/ui", _root)
    app.router.add_get("/ui/", home, name="ui.home")
    app.router.add_static("/ui/static", _HERE / "static", name="ui.static")
    for module in (signin, repositories, systems, plugins, jobs, tokens, account, admin, storage):
        module.add_routes(app)
