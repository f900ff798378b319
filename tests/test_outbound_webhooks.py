"""Webhook URLs attacked through the API, on both backends: who may set them, where they may
point, and the check made again before every delivery.

Refusals are asserted by the API's answer only: refused addresses are never contacted.
Host names are refused before resolution or resolve locally (``localhost``)."""

from __future__ import annotations

import uuid

import pytest
from aiohttp import web

from packer.settings import OutboundConfig, WebhooksConfig
from proxy.app import create_app
from tests.support.auth import auth_env, basic  # noqa: F401 - auth_env is a fixture
from tests.support.packer import push_generic, wait_for

SECRET = "s3cret-s3cret-s3cret"
LOOPBACK_REFUSED = OutboundConfig(deny_networks=[*OutboundConfig().deny_networks, "127.0.0.0/8", "::1/128"])


class Receiver:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        if request.path == "/redirect":
            raise web.HTTPTemporaryRedirect("/elsewhere")
        return web.Response()


@pytest.fixture
async def receiver(aiohttp_server):
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    receiver.port = server.port
    return receiver


def _config(config, tmp_path, allow=None, outbound=None):
    webhooks = WebhooksConfig(allow=config.webhooks.allow if allow is None else allow, poll_interval=0.05,
                              backoff=0.05, max_backoff=0.1, max_attempts=50, timeout=2)
    return config.model_copy(update={"webhooks": webhooks, "outbound": outbound or config.outbound})


async def _create(client, url: str, **extra):
    return await client.post("/api/v1/subscriptions", json={"url": url, "events": ["*"], "secret": SECRET, **extra})


async def _refusal(resp) -> str:
    assert resp.status == 422, await resp.text()
    [field] = (await resp.json())["error"]["detail"]["fields"]
    assert field["field"] == "url"
    return field["message"]


REFUSED = [
    ("http://169.254.169.254/latest/meta-data/iam/", "refused network 169.254.0.0/16"),
    ("http://[fe80::1]/hook", "refused network fe80::/10"),
    ("http://[fd00:ec2::254]/latest/", "refused network fd00:ec2::254/128"),
    ("http://[::ffff:169.254.169.254]/hook", "refused network 169.254.0.0/16"),
    ("http://metadata.google.internal/computeMetadata/v1/", "'metadata.google.internal' is a refused name"),
    ("http://127.0.0.1:{port}/hook%2f..%2fadmin", "encoded '/'"),
    ("http://127.0.0.1:{port}/hook%5C..%5Cadmin", "encoded '\\'"),
    ("http://127.0.0.1:{port}/hook/../admin", "dot segment"),
    ("http://127.0.0.1:{port}/hook/%2E%2E/admin", "dot segment"),
    ("http://2130706433:{port}/hook", "not a canonical IPv4 address"),
    ("http://hooks.example.com/hook", "is not under a prefix in [webhooks] allow"),
    ("http://127.0.0.1:{port}/other", "is not under a prefix in [webhooks] allow"),
]


async def test_refused_webhook_urls_get_a_422_naming_the_reason(aiohttp_client, config, tmp_path, receiver):
    # Even an allow-list naming the metadata services does not make them reachable.
    allow = [f"http://127.0.0.1:{receiver.port}/hook", "http://169.254.169.254/", "http://[fe80::1]/",
             "http://[fd00:ec2::254]/", "http://[::ffff:169.254.169.254]/", "http://metadata.google.internal/"]
    client = await aiohttp_client(create_app(_config(config, tmp_path, allow=allow)))
    good = await _create(client, f"http://127.0.0.1:{receiver.port}/hook/ci")
    assert good.status == 201, await good.text()
    sub_id = (await good.json())["id"]
    for url, reason in REFUSED:
        url = url.format(port=receiver.port)
        assert reason in await _refusal(await _create(client, url)), url
        resp = await client.patch(f"/api/v1/subscriptions/{sub_id}", json={"url": url})
        assert reason in await _refusal(resp), url
    # Nothing was stored or changed.
    listing = (await (await client.get("/api/v1/subscriptions")).json())["items"]
    assert [s["url"] for s in listing] == [f"http://127.0.0.1:{receiver.port}/hook/ci"]
    assert receiver.paths == []


async def test_a_host_is_resolved_at_creation(aiohttp_client, config, tmp_path, receiver):
    client = await aiohttp_client(create_app(_config(config, tmp_path, outbound=LOOPBACK_REFUSED)))
    message = await _refusal(await _create(client, f"http://localhost:{receiver.port}/hook"))
    assert "host 'localhost' resolves to 127.0.0.1 is in refused network 127.0.0.0/8" in message
    message = await _refusal(await _create(client, f"http://127.0.0.1:{receiver.port}/hook"))
    assert "127.0.0.1 is in refused network 127.0.0.0/8" in message


async def test_every_delivery_checks_the_url_again(aiohttp_client, config, tmp_path, receiver):
    """A subscription made while its address was fine; then the address is refused (a
    changed config, or a DNS answer rebound to a refused address): nothing is sent."""
    uid = uuid.uuid4().hex[:8]
    repo = f"generic/a-{uid}"
    client = await aiohttp_client(create_app(_config(config, tmp_path)))
    subs = []
    for url in (f"http://localhost:{receiver.port}/by-name", f"http://127.0.0.1:{receiver.port}/by-address"):
        resp = await _create(client, url, repositories=[repo], events=["generic.pushed"])
        assert resp.status == 201, await resp.text()
        subs.append((await resp.json())["id"])
    await client.close()

    client = await aiohttp_client(create_app(_config(config, tmp_path, outbound=LOOPBACK_REFUSED)))
    await push_generic(client, repo, "1.0", {"m": b"m"}, tmp_path / "g")

    async def attempted(sub_id: str) -> dict | None:
        items = (await (await client.get(f"/api/v1/subscriptions/{sub_id}/deliveries")).json())["items"]
        return items[0] if items and items[0]["attempts"] >= 2 else None

    by_name, by_address = [await wait_for(lambda s=s: attempted(s)) for s in subs]
    assert by_name["status"] == "pending" and by_name["last_status"] is None
    assert by_name["last_error"].startswith("refused: host 'localhost' resolves to 127.0.0.1")
    assert by_address["last_error"].startswith("refused: 127.0.0.1 is in refused network 127.0.0.0/8")
    assert receiver.paths == []


async def test_the_allow_list_is_empty_by_default(aiohttp_client, config, tmp_path, receiver):
    client = await aiohttp_client(create_app(_config(config, tmp_path, allow=[])))
    message = await _refusal(await _create(client, f"http://127.0.0.1:{receiver.port}/hook"))
    assert "not under a prefix in [webhooks] allow" in message
    assert WebhooksConfig().allow == []


async def test_only_admins_choose_webhook_urls(auth_env, receiver):
    client = auth_env.client
    url = f"http://127.0.0.1:{receiver.port}/hook"
    for user in ("biz", "alg", "cons"):
        resp = await client.post("/api/v1/subscriptions", json={"url": url, "events": ["*"]}, headers=basic(user))
        assert resp.status == 403, user
    resp = await client.post("/api/v1/subscriptions", json={"url": url, "events": ["*"]}, headers=basic("admin"))
    assert resp.status == 201, await resp.text()
    sub_id = (await resp.json())["id"]
    resp = await client.patch(f"/api/v1/subscriptions/{sub_id}", json={"url": url + "/x"}, headers=basic("biz"))
    assert resp.status == 403
    resp = await client.patch(f"/api/v1/subscriptions/{sub_id}", json={"url": url + "/x", "repositories": ["business/**"]},
                              headers=basic("admin"))
    assert resp.status == 200 and (await resp.json())["url"] == url + "/x"


async def test_redirects_are_not_followed(aiohttp_client, config, tmp_path, receiver):
    uid = uuid.uuid4().hex[:8]
    client = await aiohttp_client(create_app(_config(config, tmp_path)))
    resp = await _create(client, f"http://127.0.0.1:{receiver.port}/redirect", repositories=[f"generic/a-{uid}"])
    assert resp.status == 201, await resp.text()
    sub_id = (await resp.json())["id"]
    await push_generic(client, f"generic/a-{uid}", "1.0", {"m": b"m"}, tmp_path / "g")

    async def attempted() -> dict | None:
        items = (await (await client.get(f"/api/v1/subscriptions/{sub_id}/deliveries")).json())["items"]
        return items[0] if items and items[0]["attempts"] >= 1 else None

    delivery = await wait_for(attempted)
    assert delivery["last_status"] == 307 and delivery["status"] == "pending"
    assert set(receiver.paths) == {"/redirect"}
