"""Subscriptions end to end: signed deliveries to a loopback receiver, retries, dead letters, restarts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid

import pytest
from aiohttp import web

from packer.settings import AssemblyConfig, WebhooksConfig
from packer.webhooks import SIGNATURE_HEADER, backoff_delay, emit
from proxy.app import create_app
from tests.conftest import metadata_database
from packer.webhooks import SCHEMA
from tests.support.distribution import free_port
from tests.support.packer import create_chain, push_generic, push_plugin, wait_for, wait_jobs_done

SECRET = "s3cret-s3cret-s3cret"


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[dict, bytes, dict]] = []
        self.statuses: list[int] = []  # answers for the next requests; then 200

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((json.loads(body), body, dict(request.headers)))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    def events(self, type_: str | None = None) -> dict[str, dict]:
        """Unique events by id (receivers de-duplicate by it)."""
        return {e["id"]: e for e, _, _ in self.received if type_ is None or e["type"] == type_}


async def _start_receiver(aiohttp_server, port: int | None = None):
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app, port=port) if port else await aiohttp_server(app)
    receiver.url = str(server.make_url("/hook"))
    return receiver, server


def _config(config, tmp_path, **webhooks):
    return config.model_copy(update={
        "webhooks": WebhooksConfig(**{"allow": config.webhooks.allow, "poll_interval": 0.05, "backoff": 0.05, "max_backoff": 0.2, "max_attempts": 4,
                                      "timeout": 2, **webhooks}),
        "assembly": AssemblyConfig(poll_interval=0.5, workdir=tmp_path / "work"),
    })


async def _subscribe(client, url: str, events: list[str], repositories: list[str]) -> dict:
    resp = await client.post("/api/v1/subscriptions", json={"url": url, "events": events, "repositories": repositories,
                                                            "secret": SECRET})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def _deliveries(client, sub_id: str) -> list[dict]:
    resp = await client.get(f"/api/v1/subscriptions/{sub_id}/deliveries")
    assert resp.status == 200
    return (await resp.json())["items"]


async def test_signed_events_are_retried_after_500(aiohttp_client, aiohttp_server, config, tmp_path):
    client = await aiohttp_client(create_app(_config(config, tmp_path)))
    receiver, _ = await _start_receiver(aiohttp_server)
    receiver.statuses = [500, 500]
    uid = uuid.uuid4().hex[:8]
    sub = await _subscribe(client, receiver.url, ["generic.pushed", "business.assembled"],
                           [f"generic/a-{uid}", f"business/c-{uid}/**"])
    ignored = await _subscribe(client, receiver.url + "?other", ["*"], ["images/**"])
    assert sub["secret"] == SECRET and "secret" not in await (await client.get(f"/api/v1/subscriptions/{sub['id']}")).json()
    await push_plugin(client, f"p-{uid}", "1.0", "file", {}, {"x": b"x"})
    await create_chain(client, f"c-{uid}", [f"generic/a-{uid}"], [f"plugins/p-{uid}:1.0"])
    source = await push_generic(client, f"generic/a-{uid}", "1.0", {"m": b"m"}, tmp_path / "g")
    [job] = await wait_jobs_done(client, chain=f"c-{uid}")

    await wait_for(lambda: _async(len(receiver.events()) == 2), timeout=10)
    for event, body, headers in receiver.received:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
        assert headers["X-Algomint-Event-Id"] == event["id"]
    pushed = next(iter(receiver.events("generic.pushed").values()))
    assert pushed["repository"] == f"generic/a-{uid}"
    assert pushed["data"]["digest"] == source and pushed["data"]["chains"] == [f"c-{uid}"]
    assembled = next(iter(receiver.events("business.assembled").values()))
    assert assembled["data"]["digest"] == job["target"]["digest"] and assembled["data"]["changed"] is True
    assert assembled["data"]["source"]["digest"] == source

    async def settled() -> list[dict] | None:
        items = await _deliveries(client, sub["id"])
        return items if all(d["status"] == "delivered" for d in items) and len(items) == 2 else None

    deliveries = await wait_for(settled)
    histories = [[a["status"] for a in d["history"]] for d in deliveries]
    # Two 500s were answered (to one delivery or to both); each was retried until a 200.
    assert all(h[-1] == 200 and set(h[:-1]) <= {500} for h in histories), histories
    assert sorted(s for h in histories for s in h) == [200, 200, 500, 500]
    assert await _deliveries(client, ignored["id"]) == []


async def _async(value):
    return value


async def test_assembly_failed_event_and_dead_letter_then_retry(aiohttp_client, aiohttp_server, config, tmp_path):
    client = await aiohttp_client(create_app(_config(config, tmp_path, max_attempts=2)))
    receiver, _ = await _start_receiver(aiohttp_server)
    receiver.statuses = [500, 503]
    uid = uuid.uuid4().hex[:8]
    sub = await _subscribe(client, receiver.url, ["assembly.failed"], ["business/**"])
    await push_plugin(client, f"p-{uid}", "1.0", "function", {}, {"t.py": b"def transform(p, c):\n    raise KeyError('x')\n"})
    await create_chain(client, f"c-{uid}", [f"generic/a-{uid}"], [f"plugins/p-{uid}:1.0"])
    await push_generic(client, f"generic/a-{uid}", "1.0", {"m": b"m"}, tmp_path / "g")

    async def dead() -> list[dict] | None:
        items = await _deliveries(client, sub["id"])
        return items if items and items[0]["status"] == "dead" else None

    [delivery] = await wait_for(dead)
    assert delivery["attempts"] == 2 and delivery["last_status"] == 503
    assert [a["status"] for a in delivery["history"]] == [500, 503]
    resp = await client.post(f"/api/v1/subscriptions/{sub['id']}/deliveries/{delivery['id']}/retry")
    assert resp.status == 202

    async def delivered() -> list[dict] | None:
        items = await _deliveries(client, sub["id"])
        return items if items[0]["status"] == "delivered" else None

    await wait_for(delivered)
    [event] = receiver.events("assembly.failed").values()
    assert "KeyError" in event["data"]["error"]["reason"] and event["repository"] == f"business/c-{uid}/a-{uid}"


async def test_no_event_is_lost_across_a_restart(aiohttp_client, aiohttp_server, config, tmp_path):
    app_config = _config(config, tmp_path, max_attempts=100)
    client = await aiohttp_client(create_app(app_config))
    port = free_port()  # the receiver is down while the events happen
    uid = uuid.uuid4().hex[:8]
    sub = await _subscribe(client, f"http://127.0.0.1:{port}/hook", ["generic.pushed"], [f"generic/a-{uid}"])
    for tag in ("1.0", "1.1", "1.2"):
        await push_generic(client, f"generic/a-{uid}", tag, {"m": tag.encode()}, tmp_path / tag)

    async def failing() -> list[dict] | None:
        items = await _deliveries(client, sub["id"])
        return items if len(items) == 3 and all(d["attempts"] >= 1 and d["status"] == "pending" for d in items) else None

    await wait_for(failing)
    await client.close()  # the service stops with three undelivered events

    receiver, _ = await _start_receiver(aiohttp_server, port)
    client = await aiohttp_client(create_app(app_config))
    await wait_for(lambda: _async(len(receiver.events()) == 3), timeout=10)
    assert sorted(e["data"]["tag"] for e in receiver.events().values()) == ["1.0", "1.1", "1.2"]

    async def all_delivered() -> bool:
        return all(d["status"] == "delivered" for d in await _deliveries(client, sub["id"]))

    await wait_for(all_delivered)


async def test_subscription_api_validation_and_crud(client):
    bad = [
        ({"url": "ftp://127.0.0.1/x", "events": ["*"]}, "url"),
        ({"url": "http://u:p@127.0.0.1/x", "events": ["*"]}, "url"),
        ({"url": "http://127.0.0.1/x", "events": ["generic.exploded"]}, "events"),
        ({"url": "http://127.0.0.1/x", "events": []}, "events"),
        ({"url": "http://127.0.0.1/x", "events": ["*"], "repositories": ["Generic/*"]}, "repositories"),
        ({"url": "http://127.0.0.1/x", "events": ["*"], "secret": "short"}, "secret"),
    ]
    for body, field in bad:
        resp = await client.post("/api/v1/subscriptions", json=body)
        assert resp.status == 422, body
        assert (await resp.json())["error"]["detail"]["fields"][0]["field"] == field
    resp = await client.post("/api/v1/subscriptions", json={"url": "http://127.0.0.1:1/x", "events": ["full.built"]})
    created = await resp.json()
    assert resp.status == 201 and len(created["secret"]) == 64 and created["repositories"] == ["**"]
    resp = await client.patch(f"/api/v1/subscriptions/{created['id']}", json={"active": False, "events": ["*"]})
    assert (await resp.json())["active"] is False
    listing = await (await client.get("/api/v1/subscriptions")).json()
    assert created["id"] in [s["id"] for s in listing["items"]]
    assert (await client.delete(f"/api/v1/subscriptions/{created['id']}")).status == 204
    assert (await client.get(f"/api/v1/subscriptions/{created['id']}")).status == 404
    assert (await client.get(f"/api/v1/subscriptions/{created['id']}/deliveries")).status == 404


async def test_emit_is_part_of_the_callers_transaction(tmp_path):
    db = metadata_database(tmp_path / "m.db")
    await db.open()
    await db.migrate("webhooks", SCHEMA)
    await db.execute("INSERT INTO subscriptions (id, url, events, repositories, secret, created, updated)"
                     " VALUES ('s', 'http://127.0.0.1:1/', '[\"full.built\"]', '[\"business/**\"]', 'x', 0, 0)")
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await emit(tx, "full.built", "business/door/face", {"tag": "1.0-soft"})
            raise RuntimeError("the change failed")
    assert await db.fetchall("SELECT * FROM webhook_events") == []
    async with db.transaction() as tx:
        await emit(tx, "full.built", "business/door/face", {"tag": "1.0-soft"})
        await emit(tx, "full.built", "images/face", {"tag": "v1-soft"})  # no subscriber for images/**
    assert len(await db.fetchall("SELECT * FROM webhook_events")) == 2
    assert len(await db.fetchall("SELECT * FROM webhook_deliveries")) == 1
    with pytest.raises(ValueError):
        async with db.transaction() as tx:
            await emit(tx, "made.up", "x", {})
    await db.close()


@pytest.mark.parametrize("attempt,ceiling", [(1, 1.0), (2, 2.0), (3, 4.0), (10, 60.0)])
def test_backoff_grows_with_jitter_and_a_cap(attempt, ceiling):
    delays = [backoff_delay(attempt, 1.0, 60.0) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1


async def test_a_disabled_subscription_holds_its_deliveries(aiohttp_client, aiohttp_server, config, tmp_path):
    client = await aiohttp_client(create_app(_config(config, tmp_path, backoff=0.3, max_backoff=0.3)))
    receiver, _ = await _start_receiver(aiohttp_server)
    receiver.statuses = [500]
    uid = uuid.uuid4().hex[:8]
    sub = await _subscribe(client, receiver.url, ["generic.pushed"], [f"generic/a-{uid}"])
    await push_generic(client, f"generic/a-{uid}", "1.0", {"m": b"m"}, tmp_path / "g")
    await wait_for(lambda: _async(len(receiver.received) == 1))
    resp = await client.patch(f"/api/v1/subscriptions/{sub['id']}", json={"active": False})
    assert resp.status == 200
    await push_generic(client, f"generic/a-{uid}", "1.1", {"m": b"n"}, tmp_path / "h")  # not queued while disabled
    await asyncio.sleep(0.8)  # past the retry time: the held delivery is not attempted
    assert len(receiver.received) == 1
    [held] = await _deliveries(client, sub["id"])
    assert held["status"] == "pending" and held["attempts"] == 1
    await client.patch(f"/api/v1/subscriptions/{sub['id']}", json={"active": True})
    await wait_for(lambda: _async(len(receiver.received) == 2))
    assert [e["data"]["tag"] for e in receiver.events().values()] == ["1.0"]
