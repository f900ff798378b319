"""Service plugins through the API and assembly, on both backends: refused URLs at push,
scoped secrets, and the legitimate path (a loopback service this file starts).

Refused addresses are asserted by the API's answer only and never contacted."""

from __future__ import annotations

import base64
import uuid

import pytest
from aiohttp import web

from packer.settings import AssemblyConfig, PluginsConfig
from proxy.app import create_app
from tests.support.packer import create_chain, files_of, push_generic, push_plugin, wait_jobs_done


class Service:
    def __init__(self) -> None:
        self.auth: list[str | None] = []

    async def transform(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        body = await request.json()
        package = body["package"]
        package["files"].append({"path": "business/service.txt", "data": base64.b64encode(b"served").decode()})
        return web.json_response({"package": package})


@pytest.fixture
async def service(aiohttp_server):
    service = Service()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/api/transform", service.transform)
    server = await aiohttp_server(app, host="127.0.0.1")
    service.origin = str(server.make_url("/"))
    service.url = str(server.make_url("/api/transform"))
    return service


@pytest.fixture
async def client(aiohttp_client, config, service, tmp_path):
    plugins = PluginsConfig.model_validate({"service": {
        "allow": [service.origin + "api/", "http://169.254.169.254/"],
        "retry_backoff": 0.01,
        "secrets": {"door_api": {"value": "Bearer door-token", "plugins": ["plugins/door-*"],
                                 "urls": [service.origin + "api/"]}},
    }})
    config = config.model_copy(update={"plugins": plugins,
                                       "assembly": AssemblyConfig(poll_interval=0.5, workdir=tmp_path / "work")})
    return await aiohttp_client(create_app(config))


async def _push(client, name: str, options: dict) -> tuple[int, dict]:
    resp = await client.post("/api/v1/plugins", json={"name": name, "version": "1.0", "kind": "service",
                                                      "options": options})
    return resp.status, await resp.json()


def _reason(body: dict) -> str:
    [field] = body["error"]["detail"]["fields"]
    assert field["field"] == "options"
    return field["message"]


@pytest.mark.parametrize("url,reason", [
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "refused network 169.254.0.0/16"),
    ("http://[fe80::a9fe:a9fe]/x", "refused network fe80::/10"),
    ("http://metadata.google.internal/computeMetadata/v1/", "'metadata.google.internal' is a refused name"),
    ("{origin}api%2f..%2fadmin", "encoded '/'"),
    ("{origin}api/%2e%2e/admin", "dot segment"),
    ("{origin}admin", "not under a prefix in [plugins.service] allow"),
    ("http://localhost:1/api/transform", "not under a prefix in [plugins.service] allow"),
])
async def test_refused_service_urls_are_422_at_push(client, service, url, reason):
    uid = uuid.uuid4().hex[:8]
    status, body = await _push(client, f"door-{uid}", {"url": url.format(origin=service.origin)})
    assert status == 422 and reason in _reason(body)
    assert (await client.get(f"/api/v1/plugins/door-{uid}")).status == 404  # nothing was written
    assert service.auth == []


async def test_a_secret_is_usable_only_by_its_plugins_and_never_leaks_its_existence(client, service, tmp_path):
    uid = uuid.uuid4().hex[:8]
    status, known = await _push(client, f"fugitive-{uid}", {"url": service.url, "secret": "door_api"})
    assert status == 422
    status, unknown = await _push(client, f"fugitive-{uid}", {"url": service.url, "secret": "nope_api"})
    assert status == 422
    assert _reason(known).replace("door_api", "X") == _reason(unknown).replace("nope_api", "X")
    assert "is not available to this plugin at this URL" in _reason(known)

    # The legitimate path: a door plugin sends the door secret to the door service.
    await push_plugin(client, f"door-{uid}", "1.0", "service", {"url": service.url, "secret": "door_api"})
    await create_chain(client, f"door-{uid}", [f"generic/a-{uid}"], [f"plugins/door-{uid}:1.0"])
    await push_generic(client, f"generic/a-{uid}", "1.0", {"m": b"m"}, tmp_path / "g")
    [job] = await wait_jobs_done(client, chain=f"door-{uid}")
    assert job["status"] == "succeeded", job
    assert (await files_of(client, f"business/door-{uid}/a-{uid}", "1.0"))["business/service.txt"] == b"served"
    assert service.auth == ["Bearer door-token"]
