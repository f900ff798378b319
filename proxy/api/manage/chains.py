"""``/api/v1/chains``: business systems (chains of plugins), their reload and re-assembly.

A chain is checked as its business namespace ``business/<chain>``: reading needs ``pull``
there, changing it or re-assembling needs ``manage``; reloading the file is registry-wide."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from packer.assembly import RequestError
from packer.chains import ChainError, ChainSpec

from ...service.policy import Action
from ..state import PACKER
from .access import may
from .errors import ApiError
from .times import iso_times
from .router import ApiRouter, authorize, parse_body, validate

__all__ = ["router"]

router = ApiRouter("chains")


class ChainOut(BaseModel):
    name: str
    match: list[str]
    plugins: list[str]
    params: dict[str, Any]
    source: Literal["file", "api"]
    created: str | None = Field(None, description="ISO 8601, UTC")
    updated: str | None = None


class ChainsFile(BaseModel):
    file: str | None
    loaded_at: str | None
    chains: int
    error: dict[str, Any] | None


class ChainList(BaseModel):
    items: list[ChainOut]
    file: ChainsFile


class ChainUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: list[str] = Field(min_length=1, max_length=100)
    plugins: list[str] = Field(min_length=1, max_length=50)
    params: dict[str, Any] = {}


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


async def _listing(request: web.Request) -> dict[str, Any]:
    chains = request.app[PACKER].chains
    visible = [c.to_json() for c in chains.all() if await may(request, Action.PULL, _repository(request, c.name))]
    return _out({"items": visible, "file": chains.file_status()})


@router.route("GET", "/chains", summary="List chains (file chains first, in order, then API chains)", response=ChainList,
              action=None)
async def list_chains(request: web.Request) -> web.Response:
    return web.json_response(await _listing(request))


@router.route("POST", "/chains", summary="Create a chain; every plugin reference must resolve", body=ChainSpec,
              response=ChainOut, status=201, action=None)
async def create_chain(request: web.Request) -> web.Response:
    spec = await parse_body(request, ChainSpec)
    await authorize(request, Action.MANAGE, _repository(request, spec.name))
    try:
        chain = await request.app[PACKER].chains.create(spec)
    except ChainError as exc:
        raise _chain_error(exc) from None
    return web.json_response(_out(chain.to_json()), status=201)


@router.route("POST", "/chains/reload", summary="Reload the chains file (all or nothing)", response=ChainList)
async def reload_chains(request: web.Request) -> web.Response:
    try:
        await request.app[PACKER].chains.reload()
    except ChainError as exc:
        raise ApiError(422, "chains file rejected; the chains in force are kept", exc.to_json()) from None
    return web.json_response(await _listing(request))


@router.route("GET", "/chains/{name}", summary="One chain", response=ChainOut, action=None)
async def get_chain(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await authorize(request, Action.PULL, _repository(request, name))
    chain = request.app[PACKER].chains.get(name)
    if chain is None:
        raise ApiError(404, f"no chain {name!r}")
    return web.json_response(_out(chain.to_json()))


@router.route("PUT", "/chains/{name}", summary="Replace an API chain's match, plugins and params", body=ChainUpdate,
              response=ChainOut, action=None)
async def update_chain(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await authorize(request, Action.MANAGE, _repository(request, name))
    body = await parse_body(request, ChainUpdate)
    try:
        chain = await request.app[PACKER].chains.update(validate(ChainSpec, {"name": name, **body.model_dump()}))
    except KeyError:
        raise ApiError(404, f"no chain {name!r}") from None
    except ChainError as exc:
        raise _chain_error(exc) from None
    return web.json_response(_out(chain.to_json()))


@router.route("DELETE", "/chains/{name}", summary="Delete an API chain (its jobs and packages stay)", status=204,
              action=None)
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
              body=AssembleRequest, response=AssembleResponse, status=202, action=None)
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
