"""``GET /api/v1/openapi.json``: OpenAPI 3.1 generated from the route declarations."""

from __future__ import annotations

import re
from typing import Any, Sequence

from aiohttp import web
from pydantic import TypeAdapter

from ... import __version__
from .errors import STATUS_CODES
from .router import PAGING, PREFIX, Access, ApiRouter, Query

__all__ = ["build_document", "openapi_router", "OPENAPI"]

OPENAPI = web.AppKey("openapi", dict)
# ``{name}`` or ``{name:regex}``; the regex may hold one level of braces (``\d{1,18}``), as in aiohttp.
_PARAM_RE = re.compile(r"\{(\w+)(?::((?:[^{}]|\{[^{}]*\})*))?\}")

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": sorted(set(STATUS_CODES.values()))},
                "message": {"type": "string"},
                "detail": {},
            },
        }
    },
}


def _schema(model: Any, defs: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))
    return schema


def _path_parameter(name: str, pattern: str, declared: Query | None) -> dict[str, Any]:
    if declared is not None:
        return {"name": name, "in": "path", "required": True, "description": declared.description,
                "schema": declared.schema}
    # The route's own regex is the constraint; without one aiohttp takes one segment.
    schema = {"type": "string", "pattern": f"^(?:{pattern or '[^/]+'})$", "minLength": 1}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query_parameter(name: str, declared: str | Query) -> dict[str, Any]:
    query = declared if isinstance(declared, Query) else PAGING.get(name) or Query(declared)
    return {"name": name, "in": "query", "required": False, "description": query.description, "schema": query.schema}


def build_document(routers: Sequence[ApiRouter]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    for router in routers:
        for route in router.routes:
            path = _PARAM_RE.sub(r"{\1}", PREFIX + route.path)
            parameters = [
                _path_parameter(p, pattern, route.path_params.get(p)) for p, pattern in _PARAM_RE.findall(route.path)
            ] + [_query_parameter(q, d) for q, d in route.query.items()]
            operation: dict[str, Any] = {
                "operationId": route.name,
                "summary": route.summary,
                "tags": [route.tag],
                "responses": {
                    str(route.status): {
                        "description": "success",
                        **(
                            {"content": {"application/json": {"schema": _schema(route.response, defs)}}}
                            if route.response is not None
                            else {}
                        ),
                    },
                    "default": {
                        "description": "error",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                },
            }
            if parameters:
                operation["parameters"] = parameters
            if route.body is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _schema(route.body, defs)}},
                }
            operation["x-algomint-access"] = route.action.value  # who may call it (docs/security.md)
            if route.public:
                operation["security"] = []
            paths.setdefault(path, {})[route.method.lower()] = operation
    defs["Error"] = _ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": "algomint management API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
        "security": [{"bearer": []}, {"basic": []}],
    }


openapi_router = ApiRouter("meta")


@openapi_router.route("GET", "/openapi.json", summary="This document", action=Access.PUBLIC)
async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])
