"""Algorithms and business packages: repositories, their versions, descriptors, provenance, delivery.

Every repository shown passes the policy's ``pull`` check for this caller; one it may not
read answers 404 exactly like one that does not exist, so guessing URLs learns nothing.
Listings page by name (a sealed cursor), so a page costs the same with 10 000 repositories."""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

from aiohttp import web

from ..api.manage import audit
from ..api.manage.access import may, pull_prefixes
from ..api.manage.errors import ApiError
from ..api.manage.fullbuilds import FULL_BUILDS
from ..api.manage.router import authorize, next_cursor, page_params
from ..api.state import CONFIG, PRINCIPAL, REGISTRY
from ..oci import mediatypes as mt
from ..oci.errors import Errors, RegistryError
from ..oci.manifest import Descriptor, ParsedManifest, parse_manifest
from ..oci.reference import NAME_RE
from ..service.policy import Action
from ..service.registry import BlobContentError
from .bridge import BRIDGE
from .catalog import RepositoryIndex
from .context import auth_on, page, render

__all__ = ["add_routes", "readable_repositories", "PAGE", "REPOSITORIES"]

PAGE = 50
SCAN = 2000  # repository names one listing page checks at most
REPOSITORIES = web.AppKey("ui_repositories", RepositoryIndex)
_MAX_CONFIG = 256 * 1024  # a descriptor larger than this is not shown
NAME_PREFIX_RE = re.compile(r"[a-z0-9._/-]{1,200}")  # the start of a repository name


async def readable_repositories(request: web.Request, prefix: str, limit: int = PAGE) -> tuple[list[str], str | None]:
    """A page of the repositories under ``prefix`` the caller may pull, from the request's
    ``cursor``; and the next page's cursor.

    At most ``SCAN`` names are looked at per page: a caller who may read few of many
    repositories gets a short (even empty) page and a next page that goes on from there.
    The cursor is sealed (``next_cursor``): it may name a repository the caller may not read."""
    _, after = page_params(request, cursor=str)
    names, following = await _readable(request, prefix, after, limit, await pull_prefixes(request))
    return names, next_cursor(request, following) if following is not None else None


async def _readable(request: web.Request, prefix: str, after: str | None, limit: int,
                    prefixes: tuple[str, ...] | None) -> tuple[list[str], str | None]:
    found: list[str] = []
    scanned, previous = 0, after
    for name in await request.app[REPOSITORIES].page(prefix, after):
        if scanned == SCAN:
            return found, previous
        scanned, previous = scanned + 1, name
        # A name no grant's prefix covers is skipped at once; the policy decides the others.
        if (prefixes is None or name.startswith(prefixes)) and await may(request, Action.PULL, name):
            if len(found) == limit:
                return found, found[-1]
            found.append(name)
    return found, None


def _not_found(repo: str) -> RegistryError:
    return RegistryError(Errors.NAME_UNKNOWN, message=f"no repository {repo} you may read")


async def _require_pull(request: web.Request, repo: str) -> None:
    if not NAME_RE.fullmatch(repo) or not await may(request, Action.PULL, repo):
        raise _not_found(repo)


def _narrowed(request: web.Request, prefix: str) -> tuple[str, str]:
    """The listing's prefix narrowed by the page's "name starts with" filter, and the filter."""
    start = request.query.get("start", "").strip()[:200]
    return (prefix + start, start) if NAME_PREFIX_RE.fullmatch(start) else (prefix, "")


@page()
async def algorithms(request: web.Request) -> web.StreamResponse:
    prefix, start = _narrowed(request, request.app[CONFIG].assembly.generic_prefix)
    names, following = await readable_repositories(request, prefix)
    host, plain = _registry_host(request)
    return render(request, "algorithms.html", {"title": "Algorithms", "repositories": names, "next": following,
                                               "start": start, "host": host, "plain": plain,
                                               "prefix": request.app[CONFIG].assembly.generic_prefix})


@page()
async def packages(request: web.Request) -> web.StreamResponse:
    """Every business package the caller may read, whichever system made it: the way in for
    consumers, who may read packages without reading their system's chain."""
    prefix, start = _narrowed(request, request.app[CONFIG].assembly.business_prefix)
    names, following = await readable_repositories(request, prefix)
    return render(request, "packages.html", {"title": "Business packages", "repositories": names, "next": following,
                                             "start": start, "prefix": request.app[CONFIG].assembly.business_prefix})


async def _read_config(request: web.Request, repo: str, config: Descriptor) -> dict[str, Any] | None:
    """The package's descriptor (its config blob), verified against its digest; None when unreadable."""
    try:
        raw = await request.app[REGISTRY].read_small_blob(repo, config.digest, _MAX_CONFIG, size=config.size)
        value = json.loads(raw)
    except (BlobContentError, ValueError):
        return None
    except RegistryError as exc:
        if exc.error is Errors.BLOB_UNKNOWN:
            return None
        raise
    return value if isinstance(value, dict) else None


async def _business_from(request: web.Request, repo: str, digest: str) -> list[dict[str, str]]:
    """Business packages made from this generic manifest that the caller may read (its referrers)."""
    config = request.app[CONFIG].assembly
    found = []
    referrers, _ = await request.app[REGISTRY].list_referrers(repo, digest, mt.BUSINESS)
    for ref in referrers:
        chain = (ref.annotations or {}).get("io.algomint.chain")
        if not chain:
            continue
        target = f"{config.business_prefix}{chain}/{repo[len(config.generic_prefix):]}"
        if await may(request, Action.PULL, target):
            found.append({"repository": target, "digest": ref.digest, "chain": chain})
    return found


@page()
async def repository(request: web.Request) -> web.StreamResponse:
    repo = request.match_info["name"]
    await _require_pull(request, repo)
    tag = request.query.get("tag")
    if tag is None:
        try:  # a page of the tags index, as tags/list answers it
            tags, following = await request.app[REGISTRY].tags(repo, PAGE, request.query.get("after") or None)
        except RegistryError as exc:
            if exc.error is Errors.NAME_UNKNOWN:
                raise _not_found(repo) from None
            raise
        return render(request, "repository.html", {"title": repo, "repository": repo, "tags": tags,
                                                   "next": following, "kind": _kind(request, repo)})
    await authorize(request, Action.PULL, repo, tag)
    item = await request.app[REGISTRY].get_manifest(repo, tag)
    manifest = parse_manifest(item.data, item.media_type)
    descriptor = await _read_config(request, repo, manifest.config) if manifest.config is not None else None
    frozen = await request.app[FULL_BUILDS].store.frozen_tag(repo, tag)
    size = len(item.data) + sum(d.size for d in (*manifest.layers, *manifest.manifests)) + (
        manifest.config.size if manifest.config else 0)
    kind = _kind(request, repo)
    context = {
        "title": f"{repo}:{tag}", "repository": repo, "tag": tag, "digest": item.digest, "media_type": item.media_type,
        "manifest": manifest, "descriptor": descriptor, "frozen": frozen, "size": size, "kind": kind,
        "annotations": manifest.annotations, "layers": manifest.layers, "children": manifest.manifests,
        "business": await _business_from(request, repo, item.digest) if kind == "generic" else [],
        "licenses": sorted(request.app[FULL_BUILDS].licensers) if kind == "business" else [],
        "pushes": await _pushes(request, repo, tag, item.digest),
        "pull": await _pull_commands(request, repo, tag, item.digest, manifest, frozen.build_id if frozen else None),
    }
    return render(request, "package.html", context)


async def _descriptor_of(request: web.Request, repo: str, tag: str) -> dict[str, Any] | None:
    await authorize(request, Action.PULL, repo, tag)
    item = await request.app[REGISTRY].get_manifest(repo, tag)
    manifest = parse_manifest(item.data, item.media_type)
    return await _read_config(request, repo, manifest.config) if manifest.config is not None else None


@page()
async def diff(request: web.Request) -> web.StreamResponse:
    """A unified diff between the descriptors of two versions of one package."""
    repo = request.match_info["name"]
    await _require_pull(request, repo)
    a, b = request.query.get("a", ""), request.query.get("b", "")
    if not a or not b:
        raise ApiError(400, "choose two versions to compare")
    texts = []
    for tag in (a, b):
        descriptor = await _descriptor_of(request, repo, tag)
        texts.append(json.dumps(descriptor, indent=2, sort_keys=True).splitlines() if descriptor is not None else [])
    lines = list(difflib.unified_diff(texts[0], texts[1], f"{repo}:{a}", f"{repo}:{b}", lineterm=""))
    return render(request, "diff.html", {"title": f"{repo}: {a} → {b}", "repository": repo, "a": a, "b": b,
                                         "lines": lines})


async def _pushes(request: web.Request, repo: str, tag: str, digest: str) -> list[dict[str, Any]] | None:
    """Who pushed this version and when, from the audit log; None for callers who may not
    query it (the API's admins-only audit route decides)."""
    query = {"repository": repo, "action": "manifest.push", "outcome": "success", "limit": "100"}
    try:
        listing = await request.app[BRIDGE].call(request, audit.query, query)
    except (ApiError, RegistryError):
        return None
    return [r for r in listing["items"] if r.get("reference") in (tag, digest) or r.get("digest") == digest][:10]


async def _pull_commands(request: web.Request, repo: str, tag: str, digest: str, manifest: ParsedManifest,
                         build_id: str | None) -> list[tuple[str, str]]:
    """The commands that fetch this version, as the reader would type them: the archive with
    curl (resumable by digest), the files with oras, the manifest with skopeo, and for a full
    package the licensed runtime images with podman (those the reader may pull)."""
    host, plain = _registry_host(request)
    user = request[PRINCIPAL].name if auth_on(request) else None
    login = f" -u {user}" if user else ""
    base = f"{'http' if plain else 'https'}://{host}"
    file = f"{repo.rsplit('/', 1)[-1]}_{tag}"
    tls = "--src-tls-verify=false " if plain else ""
    creds = f"--src-creds {user} " if user else ""
    commands = [
        ("curl: the whole package as one tar", f"curl -fLOJ{login} {base}/api/v1/archive/{repo}:{tag}"),
        ("curl: resume a cut download (by digest)", f"curl -fL -C -{login} -o {file}.tar {base}/api/v1/archive/{repo}@{digest}"),
    ]
    if manifest.is_index:
        commands.append(("skopeo: the index and every image in it",
                         f"skopeo copy --all {tls}{creds}docker://{host}/{repo}:{tag} oci:./{file}"))
        record = await request.app[FULL_BUILDS].get(build_id) if build_id else None
        for image in ((record.result or {}).get("images") or []) if record else []:
            licensed = str(image.get("licensed", ""))
            if licensed and await may(request, Action.PULL, licensed.rsplit(":", 1)[0]):
                commands.append((f"podman: the licensed runtime image {licensed}",
                                 f"podman pull {'--tls-verify=false ' if plain else ''}{host}/{licensed}"))
    elif manifest.config is not None and manifest.config.media_type not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
        # A thin package: files, not a container image (podman cannot pull it).
        commands.append(("oras: its files", f"oras pull {'--plain-http ' if plain else ''}{host}/{repo}:{tag}{login}"))
        commands.append(("skopeo: the artifact as an OCI archive",
                         f"skopeo copy {tls}{creds}docker://{host}/{repo}:{tag} oci-archive:{file}.tar"))
    else:
        commands.append(("podman", f"podman pull {'--tls-verify=false ' if plain else ''}{host}/{repo}:{tag}"))
        commands.append(("skopeo", f"skopeo copy {tls}{creds}docker://{host}/{repo}:{tag} oci-archive:{file}.tar"))
    return commands


def _registry_host(request: web.Request) -> tuple[str, bool]:
    """``host:port`` registry clients reach this server at (``server.public_url`` when set),
    and whether that is plain HTTP (clients then need ``--plain-http`` / ``--tls-verify=false``)."""
    url = request.app[CONFIG].server.public_url or f"{request.scheme}://{request.host}"
    scheme, _, rest = url.partition("://")
    return rest.split("/", 1)[0], scheme != "https"


def _kind(request: web.Request, repo: str) -> str:
    config = request.app[CONFIG].assembly
    if repo.startswith(config.generic_prefix):
        return "generic"
    if repo.startswith(config.business_prefix):
        return "business"
    return "other"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/algorithms", algorithms, name="ui.algorithms")
    app.router.add_get("/ui/packages", packages, name="ui.packages")
    app.router.add_get("/ui/diff/{name:.+}", diff, name="ui.diff")
    app.router.add_get("/ui/repositories/{name:.+}", repository, name="ui.repository")
