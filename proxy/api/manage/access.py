"""Per-repository permission checks for management routes about repositories.

Chains, plugins and assembly jobs belong to repositories (``business/<chain>``,
``plugins/<name>``, a job's business repository), so their routes ask the policy about
that repository rather than for registry-wide ``manage``: a business developer granted
``business/**`` and ``plugins/**`` manages their chains and plugins without being admin."""

from __future__ import annotations

from aiohttp import web

from ...oci.errors import Errors, RegistryError
from ...service.policy import Action
from .router import authorize

__all__ = ["may"]


async def may(request: web.Request, action: Action, repository: str) -> bool:
    """Whether the caller may ``action`` on ``repository``; unauthenticated still answers 401."""
    try:
        await authorize(request, action, repository)
    except RegistryError as exc:
        if exc.error is Errors.DENIED:
            return False
        raise
    return True
