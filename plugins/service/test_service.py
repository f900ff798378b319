"""The service kind against a real loopback HTTP server: protocol, retries, limits, cache."""

from __future__ import annotations

import asyncio
import base64

import pytest
from aiohttp import web

from packer.plugin import PluginError
from plugins import service as service_kind


class Backend:
    """A scriptable plugin service: answers[n] is used for the n-th call (last one repeats)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.headers: list[dict] = []
        self.answers: list = ["transform"]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append(body)
        self.headers.append(dict(request.headers))
        answer = self.answers[min(len(self.calls) - 1, len(self.answers) - 1)]
        if answer == "transform":
            package = body["package"]
            package["descriptor"]["parameters"]["site"] = body["context"]["params"]["site"]
            package["files"].append({"path": "service.txt", "data": base64.b64encode(b"from service").decode()})
            return web.json_response({"package": package, "log": "transformed"})
        if isinstance(answer, int):
            return web.Response(status=answer, text=f"status {answer}")
        if answer == "sleep":
            await asyncio.sleep(5)
        if answer == "drop":
            request.transport.close()
            return web.Response()
        if isinstance(answer, (bytes, str)):
            return web.Response(body=answer, content_type="application/json")
        return web.json_response(answer)


@pytest.fixture
async def service(aiohttp_server):
    backend = Backend()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/transform", backend.handle)
    server = await aiohttp_server(app)
    backend.url = str(server.make_url("/transform"))
    backend.origin = str(server.make_url("/"))
    return backend


def _env(make_env, service, **extra):
    return make_env(http=True, service={"allow": [service.origin], "retries": 2, "retry_backoff": 0.01,
                                        "secrets": {"door": {"value": "Bearer s3cret", "plugins": ["plugins/test-*"],
                                                             "urls": [service.url]}}, **extra})


async def test_round_trip_with_secret_header_context_and_log(package, context, logs, make_artifact, make_env, service):
    plugin = service_kind.setup(make_artifact("service", {"url": service.url, "secret": "door"}), _env(make_env, service))
    out = await plugin.apply(package, context)
    assert out.descriptor["parameters"]["site"] == "hq" and out.descriptor["x-kept"] == [1, 2]
    assert out.files["service.txt"].data == b"from service"
    assert out.files["model.txt"].media_type == "application/x-model"
    assert service.headers[0]["Authorization"] == "Bearer s3cret"
    assert service.calls[0]["context"]["source"]["repository"] == "generic/face-recog"
    assert "transformed" in logs


async def test_answers_are_cached_by_plugin_and_input(package, context, make_artifact, make_env, service):
    env = _env(make_env, service)
    plugin = service_kind.setup(make_artifact("service", {"url": service.url}), env)
    first = await plugin.apply(package.copy(), context)
    second = await plugin.apply(package.copy(), context)
    assert len(service.calls) == 1 and first.digest() == second.digest()
    changed = package.copy()
    changed.put("model.txt", b"other")
    await plugin.apply(changed, context)
    assert len(service.calls) == 2


async def test_5xx_and_dropped_connections_are_retried(package, context, logs, make_artifact, make_env, service):
    service.answers = [503, "drop", "transform"]
    plugin = service_kind.setup(make_artifact("service", {"url": service.url}), _env(make_env, service))
    out = await plugin.apply(package, context)
    assert "service.txt" in out.files and len(service.calls) == 3
    assert sum("retry" in line for line in logs) == 2


@pytest.mark.parametrize("answers,options,message", [
    ([500], {}, "failed after 3 attempts: HTTP 500"),
    ([400], {}, "answered HTTP 400: status 400"),
    (["sleep"], {"timeout": 0.3}, "timed out after 0.3s"),
    ([b"{not json"], {}, "invalid JSON"),
    ([{"nothing": 1}], {}, "has no 'package'"),
    ([{"package": {"descriptor": {}, "files": [{"path": "../x", "data": ""}]}}], {}, "path traversal"),
    ([{"package": {"descriptor": {}, "files": [{"path": "x", "data": "!!"}]}}], {}, "not valid base64"),
    ([{"package": {"descriptor": [], "files": []}}], {}, "descriptor: must be a JSON object"),
    ([{"package": {"descriptor": {}, "files": [{"path": "big", "data": base64.b64encode(b"0" * (1024 * 1024 + 10)).decode()}]}}],
     {}, "over the 1048576-byte package cap"),
])
async def test_failures_are_precise(package, context, make_artifact, make_env, service, answers, options, message):
    service.answers = answers
    plugin = service_kind.setup(make_artifact("service", {"url": service.url, **options}), _env(make_env, service))
    with pytest.raises(PluginError) as info:
        await plugin.apply(package, context)
    assert message in info.value.reason


async def test_connection_refused_is_retried_then_fails(package, context, make_artifact, make_env):
    env = make_env(http=True, service={"allow": ["http://127.0.0.1:9/"], "retries": 1, "retry_backoff": 0})
    plugin = service_kind.setup(make_artifact("service", {"url": "http://127.0.0.1:9/x"}), env)
    with pytest.raises(PluginError, match="failed after 2 attempts"):
        await plugin.apply(package, context)


async def test_oversized_answer_is_cut_off(package, context, make_artifact, make_env, service):
    service.answers = [b"[" + b"0," * 2_000_000 + b"0]"]
    plugin = service_kind.setup(make_artifact("service", {"url": service.url}), _env(make_env, service))
    with pytest.raises(PluginError, match="over the .*-byte limit"):
        await plugin.apply(package, context)


@pytest.mark.parametrize("options,message", [
    ({"url": "http://127.0.0.1:1/x"}, "not under a prefix in [plugins.service] allow"),
    ({"url": "http://user:pw@127.0.0.1:8080/x"}, "must not carry credentials"),
    ({"url": "ftp://127.0.0.1:8080/x"}, "http:// or https:// URL"),
    ({"url": "http://127.0.0.1:8080/x", "secret": "missing"}, "'missing' is not available to this plugin"),
    ({"url": "http://127.0.0.1:8080/x", "header": "Host"}, "set by algomint"),
    ({"url": "http://127.0.0.1:8080/x", "token": "abc"}, "token"),
])
def test_bad_options(make_artifact, make_env, options, message):
    env = make_env(service={"allow": ["http://127.0.0.1:8080/"]})
    with pytest.raises(PluginError) as info:
        service_kind.setup(make_artifact("service", options), env)
    assert message in info.value.reason
