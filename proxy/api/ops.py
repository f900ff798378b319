"""Operations endpoints: liveness, readiness, Prometheus metrics.

Readiness checks beyond the backend and the database are registered by the composition
root (``add_ready_check``), so this module knows nothing of the parts that report."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from aiohttp import web

from ..meta import MetadataError
from ..oci.errors import RegistryError
from .state import DATABASE, METRICS, REGISTRY

# Longest a readiness check waits for the backend: probes have short timeouts of their
# own, and a backend that takes longer than this is not ready to serve pulls either.
READY_TIMEOUT = 5.0


# A check answers (status text, whether the service is ready as far as it is concerned);
# a text other than "ok" with True reports a degraded but serving state (e.g. unsafe mode).
ReadyCheck = Callable[[], Awaitable[tuple[str, bool]]]
READY_CHECKS = web.AppKey("ready_checks", dict[str, ReadyCheck])


def add_ready_check(app: web.Application, name: str, check: ReadyCheck) -> None:
    app.setdefault(READY_CHECKS, {})[name] = check


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await request.app[REGISTRY].backend.ping()
        checks["backend"] = "ok"
    except RegistryError as exc:
        checks["backend"] = exc.message
    except TimeoutError:
        checks["backend"] = f"backend did not answer within {READY_TIMEOUT:g} s"
    try:
        await request.app[DATABASE].ping()
        checks["metadata"] = "ok"
    except MetadataError as exc:
        checks["metadata"] = str(exc)
    ready = all(v == "ok" for v in checks.values())
    for name, check in request.app.get(READY_CHECKS, {}).items():
        checks[name], fine = await check()
        ready = ready and fine
    return web.json_response({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=await request.app[METRICS].scrape(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, name="ops.healthz")
    app.router.add_get("/readyz", readyz, name="ops.readyz")
    app.router.add_get("/metrics", metrics, name="ops.metrics")
