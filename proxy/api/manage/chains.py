"""``/api/v1/chains``: business systems (chains of plugins), their reload and re-assembly.

A chain is checked as its business namespace ``business/<chain>``: reading needs ``pull``
there, changing it or re-assembling needs ``manage``; reloading the file is registry-wide.
Creating or changing a chain also needs ``pull`` on everything it reads, since its output
is readable by whoever may read ``business/<chain>``: every repository its ``match`` globs
can cover and every plugin it names. The caller becomes the chain's owner, and assembly
runs with the owner's rights of the moment."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from packer.assembly import RequestError
from packer.chains import ChainError, ChainSpec
from proxy.oci.errors import RegistryError
from proxy.oci.reference import parse_reference

from ...service.policy import Action
from ..state import PACKER
from .access import caller, may, require_pull_all
from .principals import can_manage
from .errors import ApiError
from .times import iso_times
from .router import Access, ApiRouter, authorize, parse_body, validate

__all__ = ["router"]

router = ApiRouter("chains")


class ChainOwner(BaseModel):
    name: str
    kind: str


class ChainOut(BaseModel):
    name: str
    match: list[str]
    plugins: list[str]
    params: dict[str, Any]
    platforms: list[str] = []
    source: Literal["file", "api"]
    owner: ChainOwner | None = None  # whose rights it runs with; "system" for the chains file
    created: str | None = Field(None, description="ISO 8601, UTC")
    updated: str | None = None


class ChainsFile(BaseModel):
    file: str | None
    loaded_at: str | None
    chains: int
    error: dict[str, Any] | None


class ChainList(BaseModel):
    items: list[ChainOut]
    file: ChainsFile | None = Field(description="the chains file's status (admins only)")


class ChainUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: list[str] = Field(min_length=1, max_length=100)
    plugins: list[str] = Field(min_length=1, max_length=50)
    params: dict[str, Any] = {}
    platforms: list[str] = []  # descriptor platforms the chain takes (packer.platform names); empty: all


class AssembleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "generic/face-recog:1.0" …; omitted: every tag of every repository the chain matches.
    packages: list[str] | None = Field(None, max_length=10_000)


class AssembleResponse(BaseModel):
    chain: str
    jobs: list[int]


def _chain_error(exc: ChainError) -> ApiError:
    if exc.conflict:
        return ApiError(409, str(exc), exc.to_json())
    return ApiError(422, "chain rejected", {"fields": [{"field": exc.field or "(body)", "message": exc.message}],
                                            **({"file": exc.file, "line": exc.line} if exc.file else {})})


def _out(value: Any) -> Any:
    return iso_times(value, "created", "updated", "loaded_at")


def _repository(request: web.Request, name: str) -> str:
    """The business namespace a chain writes to: permissions on it cover the chain."""
    return f"{request.app[PACKER].assembly.settings.business_prefix}{name}"


async def _check_reads(request: web.Request, spec: ChainSpec) -> None:
    """The caller may pull every source the chain can match and every plugin it names."""
    await require_pull_all(request, "match", spec.match, request.app[PACKER].chains.sources + "**")
    for i, ref in enumerate(spec.plugins):
        try:
            repository = parse_reference(ref).name
        except RegistryError:
            continue  # not a reference: the plugin check answers 422 with the reason
        if not await may(request, Action.PULL, repository):
            raise ApiError(403, f"plugins.{i} {ref!r}: the caller may not pull {repository}",
                           {"field": f"plugins.{i}", "repository": repository})


async def _listing(request: web.Request) -> dict[str, Any]:
    """The chains the caller may read; the chains file's status (its path and any load
    error, which name other chains) only for admins."""
    chains = request.app[PACKER].chains
    visible = [c.to_json() for c in chains.all() if await may(request, Action.PULL, _repository(request, c.name))]
    return _out({"items": visible, "file": chains.file_status() if await can_manage(request) else None})


@router.route("GET", "/chains", summary="List chains (file chains first, in order, then API chains)", response=ChainList,
              action=Access.SIGNED_IN)
async def list_chains(request: web.Request) -> web.Response:
    return web.json_response(await _listing(request))


@router.route("POST", "/chains", summary="Create a chain; every plugin reference must resolve", body=ChainSpec,
              response=ChainOut, status=201, action=Access.REPOSITORY)
async def create_chain(request: web.Request) -> web.Response:
    spec = await parse_body(request, ChainSpec)
    await authorize(request, Action.MANAGE, _repository(request, spec.name))
    await _check_reads(request, spec)
    try:
        chain = await request.app[PACKER].chains.create(spec, caller(request))
    except ChainError as exc:
        raise _chain_error(exc) from None
    return web.json_response(_out(chain.to_json()), status=201)


@router.route("POST", "/chains/reload", summary="Reload the chains file (all or nothing)", response=ChainList, action=Access.MANAGE)
async def reload_chains(request: web.Request) -> web.Response:
    try:
        await request.app[PACKER].chains.reload()
    except ChainError as exc:
        raise ApiError(422, "chains file rejected; the chains in force are kept", exc.to_json()) from None
    return web.json_response(await _listing(request))


@router.route("GET", "/chains/{name}", summary="One chain", response=ChainOut, action=Access.REPOSITORY)
async def get_chain(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await authorize(request, Action.PULL, _repository(request, name))
    chain = request.app[PACKER].chains.get(name)
    if chain is None:
        raise ApiError(404, f"no chain {name!r}")
    return web.json_response(_out(chain.to_json()))


@router.route("PUT", "/chains/{name}", summary="Replace an API chain's match, plugins and params", body=ChainUpdate,
              response=ChainOut, action=Access.REPOSITORY)
async def update_chain(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await authorize(request, Action.MANAGE, _repository(request, name))
    body = await parse_body(request, ChainUpdate)
    spec = validate(ChainSpec, {"name": name, **body.model_dump()})
    await _check_reads(request, spec)
    try:
        chain = await request.app[PACKER].chains.update(spec, caller(request))
    except KeyError:
        raise ApiError(404, f"no chain {name!r}") from None
    except ChainError as exc:
        raise _chain_error(exc) from None
    return web.json_response(_out(chain.to_json()))


@router.route("DELETE", "/chains/{name}", summary="Delete an API chain (its jobs and packages stay)", status=204,
              action=Access.REPOSITORY)
async def delete_chain(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await authorize(request, Action.MANAGE, _repository(request, name))
    try:
        await request.app[PACKER].chains.delete(name)
    except KeyError:
        raise ApiError(404, f"no chain {name!r}") from None
    except ChainError as exc:
        raise _chain_error(exc) from None
    return web.Response(status=204)


@router.route("POST", "/chains/{name}/assemble", summary="Re-run a chain for chosen or all matching packages",
              body=AssembleRequest, response=AssembleResponse, status=202, action=Access.REPOSITORY)
async def assemble_chain(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await authorize(request, Action.MANAGE, _repository(request, name))
    body = await parse_body(request, AssembleRequest)
    try:
        jobs = await request.app[PACKER].assembly.assemble(name, body.packages)
    except KeyError:
        raise ApiError(404, f"no chain {name!r}") from None
    except RequestError as exc:
        raise ApiError(422, "packages rejected", {"fields": [{"field": exc.field, "message": exc.message}]}) from None
    return web.json_response({"chain": name, "jobs": jobs}, status=202)
