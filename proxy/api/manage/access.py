"""Per-repository permission checks for management routes about repositories.

Chains, plugins and assembly jobs belong to repositories (``business/<chain>``,
``plugins/<name>``, a job's business repository), so their routes ask the policy about
that repository rather than for registry-wide ``manage``: a business developer granted
``business/**`` and ``plugins/**`` manages their chains and plugins without being admin."""

from __future__ import annotations

from typing import Sequence

from aiohttp import web

from ...auth.coverage import CoverageError, uncovered
from ...auth.state import AUTH, AUTH_STORE
from ...oci.errors import Errors, RegistryError
from ...service.policy import ANONYMOUS, Action, Principal
from ..state import PRINCIPAL
from .errors import ApiError
from .router import authorize

__all__ = ["may", "caller", "require_pull_all", "pull_prefixes"]


async def may(request: web.Request, action: Action, repository: str) -> bool:
    """Whether the caller may ``action`` on ``repository``; unauthenticated still answers 401."""
    try:
        await authorize(request, action, repository)
    except RegistryError as exc:
        if exc.error is Errors.DENIED:
            return False
        raise
    return True


async def pull_prefixes(request: web.Request) -> tuple[str, ...] | None:
    """Name prefixes that every repository the caller may pull starts with: the literal start
    of each pull pattern, up to its first ``*``. None when any name may be readable (auth
    off, the system, a pattern that starts with a wildcard). Listings use it to skip rows in
    SQL before ``may`` decides each remaining one, never instead of ``may``."""
    if AUTH not in request.app:
        return None
    principal = request.get(PRINCIPAL, ANONYMOUS)
    if principal.kind == "system":
        return None
    perms = await request.app[AUTH_STORE].permissions_of(principal)
    if perms is None:
        raise ApiError(401, "credentials are no longer valid")
    prefixes = {pattern.split("*", 1)[0] for pattern in perms.pull_patterns()}
    return None if "" in prefixes else tuple(sorted(prefixes))


def caller(request: web.Request) -> Principal:
    """Who is asking, as the plain principal derived work is recorded under."""
    principal = request.get(PRINCIPAL, ANONYMOUS)
    return Principal(principal.name, principal.kind)


async def require_pull_all(request: web.Request, field: str, globs: Sequence[str], within: str = "**") -> None:
    """403 unless the caller may pull every repository the globs can match, now or later.

    ``within`` is the pattern of the names the globs can read at all (``generic/**``);
    with authentication off everyone may pull everything and nothing is checked."""
    if AUTH not in request.app:
        return
    principal = request.get(PRINCIPAL, ANONYMOUS)
    if principal.kind == "system":
        return
    perms = await request.app[AUTH_STORE].permissions_of(principal)
    if perms is None:
        raise ApiError(401, "credentials are no longer valid")
    patterns = perms.pull_patterns()
    for i, glob in enumerate(globs):
        try:
            example = uncovered(glob, patterns, within)
        except CoverageError as exc:
            raise ApiError(422, str(exc), {"field": f"{field}.{i}"}) from None
        if example is not None:
            raise ApiError(403, f"{field}.{i} {glob!r} can read {example}, which {principal.name} may not pull",
                           {"field": f"{field}.{i}", "glob": glob, "repository": example})
