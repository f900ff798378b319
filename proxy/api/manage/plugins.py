"""``/api/v1/plugins``: plugin artifacts in the plugins namespace — list, inspect, push.

Checked like the registry checks ``plugins/<name>``: ``pull`` to see, ``push`` to publish."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from packer.package import PackageError, PackageFile, validate_path
from packer.plugin import PluginConfig, PluginError

from ...oci.errors import RegistryError
from ...oci.reference import validate_name
from ...service.policy import Action
from ..state import PACKER
from .access import may
from .errors import ApiError
from .router import Access, ApiRouter, Page, authorize, next_cursor, page_params, parse_body, validate

__all__ = ["router"]

router = ApiRouter("plugins")


class PluginSummary(BaseModel):
    repository: str
    name: str
    tags: list[str]


class PluginFileOut(BaseModel):
    path: str
    size: int
    digest: str
    mediaType: str


class PluginVersion(BaseModel):
    tag: str
    digest: str | None = None
    config: dict[str, Any] | None = None
    files: list[PluginFileOut] = []
    error: str | None = None


class PluginDetail(BaseModel):
    repository: str
    name: str
    versions: list[PluginVersion]


class PluginFileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=1024)
    data: str  # base64
    media_type: str | None = None


class PluginPush(BaseModel):
    """A plugin artifact: its config (name, version, kind, options) and files."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    version: str = Field(pattern=r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
    kind: Literal["file", "service", "job", "function"]
    options: dict[str, Any] = {}
    files: list[PluginFileIn] = Field([], max_length=1000)


class PluginPushed(BaseModel):
    repository: str
    tag: str
    digest: str


def _repository(request: web.Request) -> str:
    packer = request.app[PACKER]
    name = request.match_info["name"]
    try:
        return validate_name(packer.plugins.prefix + name)
    except RegistryError:
        raise ApiError(404, f"no plugin {name[:100]!r}") from None


@router.route("GET", "/plugins", summary="List plugin repositories and their tags", response=Page[PluginSummary],
              query={"limit": "page size (1-500)", "cursor": "from the previous page's next"}, action=Access.SIGNED_IN)
async def list_plugins(request: web.Request) -> web.Response:
    limit, cursor = page_params(request, cursor=str)
    packer = request.app[PACKER]
    items: list[dict[str, Any]] = []
    more = False
    # Filter before paging: a page and its cursor only ever hold names the caller may pull.
    # Batches of the sorted plugin range, so a page reads about a page of names.
    after, exhausted = cursor, False
    while not more and not exhausted:
        batch, has_more = await packer.plugins.repositories(limit + 1, after)
        exhausted = not has_more or not batch
        for repo in batch:
            after = repo
            if not await may(request, Action.PULL, repo):
                continue
            if len(items) == limit:
                more = True
                break
            try:
                tags = await packer.registry.backend.list_tags(repo)
            except RegistryError:
                tags = []
            items.append({"repository": repo, "name": repo[len(packer.plugins.prefix):], "tags": tags})
    return web.json_response({"items": items, "next": next_cursor(request, items[-1]["repository"]) if more else None})


@router.route("GET", "/plugins/{name:.+}", summary="A plugin's versions: digest, config (kind, options), files",
              response=PluginDetail, action=Access.REPOSITORY)
async def get_plugin(request: web.Request) -> web.Response:
    packer = request.app[PACKER]
    repository = _repository(request)
    await authorize(request, Action.PULL, repository)
    try:
        versions = await packer.plugins.versions(repository)
    except RegistryError as exc:
        if exc.status == 404:
            raise ApiError(404, f"no plugin {request.match_info['name'][:100]!r}") from None
        raise
    return web.json_response({"repository": repository, "name": request.match_info["name"], "versions": versions})


@router.route("POST", "/plugins", summary="Push a plugin artifact (plugins/<name>:<version>)", body=PluginPush,
              response=PluginPushed, status=201, action=Access.REPOSITORY)
async def push_plugin(request: web.Request) -> web.Response:
    body = await parse_body(request, PluginPush)
    packer = request.app[PACKER]
    try:
        validate_name(packer.plugins.prefix + body.name)
    except RegistryError:
        raise ApiError(422, "invalid plugin", {"fields": [{"field": "name", "message": "not a repository name"}]}) from None
    await authorize(request, Action.PUSH, packer.plugins.prefix + body.name, body.version)
    files: dict[str, PackageFile] = {}
    for i, item in enumerate(body.files):
        try:
            path = validate_path(item.path, f"files.{i}.path")
            data = base64.b64decode(item.data, validate=True)
        except PackageError as exc:
            raise ApiError(422, "invalid plugin", {"fields": [{"field": f"files.{i}.path", "message": exc.reason}]}) from None
        except (binascii.Error, ValueError):
            raise ApiError(422, "invalid plugin", {"fields": [{"field": f"files.{i}.data", "message": "not base64"}]}) from None
        files[path] = PackageFile(path, data, item.media_type or "application/vnd.oci.image.layer.v1.tar")
    config = validate(PluginConfig, {**body.options, "name": body.name, "version": body.version, "kind": body.kind})
    try:
        result = await packer.plugins.push(body.name, config, files, packer.env)
    except PluginError as exc:
        raise ApiError(422, "invalid plugin", {"fields": [{"field": "options", "message": exc.reason}]}) from None
    return web.json_response({"repository": packer.plugins.prefix + body.name, "tag": body.version, "digest": result.digest},
                             status=201)
