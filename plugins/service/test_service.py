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
        if answer == "redirect":
            raise web.HTTPFound(str(request.url))
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
    (["redirect"], {}, "answered HTTP 302"),  # not followed
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


# -- where a service plugin may call, and which secret it may send there ---------------------------

REFUSED_URLS = [
    ("http://169.254.169.254/latest/meta-data/", "refused network 169.254.0.0/16"),
    ("http://[fd00:ec2::254]/latest/", "refused network fd00:ec2::254/128"),
    ("http://metadata.google.internal/computeMetadata/v1/", "refused name"),
    ("{origin}transform%2f..%2fadmin", "encoded '/'"),
    ("{origin}transform/%2e%2e/admin", "dot segment"),
    ("{origin}transform/../admin", "dot segment"),
    ("http://services.example.com/transform", "not under a prefix in [plugins.service] allow"),
]


@pytest.mark.parametrize("url,reason", REFUSED_URLS)
async def test_refused_urls_are_never_called(package, context, make_artifact, make_env, service, url, reason):
    env = make_env(http=True, service={"allow": [service.origin, "http://169.254.169.254/", "http://[fd00:ec2::254]/",
                                                 "http://metadata.google.internal/"]})
    with pytest.raises(PluginError) as info:
        service_kind.setup(make_artifact("service", {"url": url.format(origin=service.origin)}), env)
    assert reason in info.value.reason
    assert service.calls == []


async def test_a_name_resolving_to_a_refused_address_is_refused_at_push_and_at_call(
        package, context, make_artifact, make_env, service):
    from packer.outbound import DEFAULT_DENY_HOSTS, DEFAULT_DENY_NETWORKS, Denylist

    deny = Denylist([*DEFAULT_DENY_NETWORKS, "127.0.0.0/8", "::1/128"], DEFAULT_DENY_HOSTS)
    url = service.url.replace("127.0.0.1", "localhost")
    env = make_env(http=True, deny=deny, service={"allow": [service.origin.replace("127.0.0.1", "localhost")],
                                                  "retries": 3, "retry_backoff": 0})
    plugin = service_kind.setup(make_artifact("service", {"url": url}), env)  # no resolution here
    with pytest.raises(PluginError, match="resolves to 127.0.0.1 is in refused network 127.0.0.0/8"):
        await plugin.verify()
    # At call time the connection's resolver refuses it: not retried, nothing sent.
    with pytest.raises(PluginError, match=r"refused: host 'localhost' resolves to 127\.0\.0\.1"):
        await plugin.apply(package, context)
    assert service.calls == []


def _scoped_env(make_env, service, plugins, urls):
    return make_env(http=True, service={
        "allow": [service.origin],
        "secrets": {"fugitive_api": {"value": "Bearer fugitive", "plugins": plugins, "urls": urls}}})


@pytest.mark.parametrize("plugins,urls", [
    (["plugins/fugitive-*"], ["{url}"]),           # another system's plugins
    (["plugins/test-service"], ["{origin}other/"]),  # this plugin, but not for this URL
])
async def test_a_secret_goes_only_to_its_plugins_and_prefixes(package, context, make_artifact, make_env, service,
                                                              plugins, urls):
    env = _scoped_env(make_env, service, plugins, [u.format(url=service.url, origin=service.origin) for u in urls])
    artifact = make_artifact("service", {"url": service.url, "secret": "fugitive_api"})
    with pytest.raises(PluginError) as refused:
        service_kind.setup(artifact, env)
    with pytest.raises(PluginError) as unknown:
        service_kind.setup(make_artifact("service", {"url": service.url, "secret": "no_such_api"}), env)
    # The same answer whether the secret exists or not.
    assert refused.value.reason.replace("fugitive_api", "X") == unknown.value.reason.replace("no_such_api", "X")
    assert "is not available to this plugin at this URL" in refused.value.reason
    assert service.calls == []


async def test_a_scoped_secret_reaches_its_own_prefix(package, context, make_artifact, make_env, service):
    env = _scoped_env(make_env, service, ["plugins/test-*"], [service.origin + "transform"])
    plugin = service_kind.setup(make_artifact("service", {"url": service.url, "secret": "fugitive_api"}), env)
    await plugin.apply(package, context)
    assert service.headers[0]["Authorization"] == "Bearer fugitive"


def test_an_unscoped_secret_is_a_config_error():
    from pydantic import ValidationError

    from packer.settings import ServicePluginConfig

    with pytest.raises(ValidationError, match="plugins"):
        ServicePluginConfig.model_validate({"secrets": {"door": {"value": "Bearer x", "urls": ["http://127.0.0.1/"]}}})
    with pytest.raises(ValidationError, match="dot segment"):
        ServicePluginConfig.model_validate({"secrets": {"door": {"value": "Bearer x", "plugins": ["plugins/door"],
                                                                 "urls": ["http://127.0.0.1/a/../"]}}})
