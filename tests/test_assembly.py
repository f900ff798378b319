"""Assembly end to end on both backends: oras push of a generic package -> business packages.

A chain mixing all four plugin kinds (the service plugin is a loopback aiohttp app),
subject/annotations/content of the result, the referrers listing under the generic
repository, idempotent re-assembly and re-assembly of a changed generic tag."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import uuid

import pytest
from aiohttp import web

from packer.settings import AssemblyConfig, PluginsConfig
from proxy.app import create_app
from proxy.oci import mediatypes as mt
from tests.support.packer import (
    DESCRIPTOR,
    blob,
    create_chain,
    files_of,
    jobs,
    manifest,
    push_generic,
    push_plugin,
    wait_jobs_done,
)

FUNCTION = b"""
def transform(package, context):
    package["descriptor"]["parameters"]["system"] = context["system"]
    package["files"]["business/function.txt"] = "function saw %d files" % len(package["files"])
"""
JOB = (
    "import json, pathlib\n"
    "d = json.load(open('algorithm.json'))\n"
    "pathlib.Path('files/business/job.txt').write_text('job for ' + d['name'] + ' ' + d['version'])\n"
)


class PluginService:
    def __init__(self) -> None:
        self.calls = 0

    async def transform(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.json()
        ctx, package = body["context"], body["package"]
        text = f"{ctx['system']}:{ctx['algorithm']}:{ctx['version']}:{ctx['params'].get('site')}"
        package["files"].append({"path": "business/service.txt", "data": base64.b64encode(text.encode()).decode()})
        return web.json_response({"package": package})


@pytest.fixture
async def plugin_service(aiohttp_server):
    service = PluginService()
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/transform", service.transform)
    server = await aiohttp_server(app)
    service.url = str(server.make_url("/transform"))
    service.origin = str(server.make_url("/"))
    return service


@pytest.fixture
async def app_client(aiohttp_client, config, plugin_service, tmp_path):
    config = config.model_copy(update={
        "plugins": PluginsConfig.model_validate({"service": {"allow": [plugin_service.origin], "retry_backoff": 0.01}}),
        "assembly": AssemblyConfig(poll_interval=0.5, workdir=tmp_path / "work"),
    })
    return await aiohttp_client(create_app(config))


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


async def _four_kinds(client, plugin_service, uid: str) -> list[str]:
    await push_plugin(client, f"form-{uid}", "1.0", "file",
                      {"files": [{"source": "form.json", "path": "business/form.json"},
                                 {"source": "params.json", "merge_patch": "descriptor"}]},
                      {"form.json": b'{"fields":["badge"]}', "params.json": b'{"parameters":{"door":true}}'})
    await push_plugin(client, f"fn-{uid}", "1.0", "function", {}, {"transform.py": FUNCTION})
    await push_plugin(client, f"job-{uid}", "1.0", "job", {"command": [sys.executable, "{plugin}/job.py"]},
                      {"job.py": JOB.encode()})
    await push_plugin(client, f"svc-{uid}", "1.0", "service", {"url": plugin_service.url})
    return [f"plugins/form-{uid}:1.0", f"plugins/fn-{uid}:1.0", f"plugins/job-{uid}:1.0", f"plugins/svc-{uid}:1.0"]


async def test_push_generic_assembles_every_matching_chain(app_client, plugin_service, uid, tmp_path):
    client = app_client
    refs = await _four_kinds(client, plugin_service, uid)
    await create_chain(client, f"door-{uid}", [f"generic/algo-{uid}"], refs, {"site": "hq"})
    await create_chain(client, f"search-{uid}", ["generic/**"], [refs[0]])
    await create_chain(client, f"other-{uid}", [f"generic/nothing-{uid}"], [refs[0]])
    generic = f"generic/algo-{uid}"
    source = await push_generic(client, generic, "1.0", {"model.onnx": b"\x01" * 5000, "README.md": b"generic"},
                                tmp_path / "g")

    done = await wait_jobs_done(client, count=2, repository=generic)
    assert sorted(j["chain"] for j in done) == [f"door-{uid}", f"search-{uid}"]
    assert all(j["status"] == "succeeded" for j in done), done

    business = f"business/door-{uid}/algo-{uid}"
    digest, doc = await manifest(client, business, "1.0")
    assert doc["artifactType"] == mt.BUSINESS
    assert doc["config"]["mediaType"] == mt.ALGORITHM_CONFIG
    resp = await client.head(f"/v2/{generic}/manifests/1.0")
    assert resp.headers["Docker-Content-Digest"] == source
    assert doc["subject"] == {"mediaType": mt.OCI_MANIFEST, "digest": source, "size": int(resp.headers["Content-Length"])}

    job = next(j for j in done if j["chain"] == f"door-{uid}")
    pinned = [f"{p['repository']}@{p['digest']}" for p in job["plugins"]]
    assert [p["kind"] for p in job["plugins"]] == ["file", "function", "job", "service"]
    assert doc["annotations"] == {
        "io.algomint.chain": f"door-{uid}",
        "io.algomint.plugins": ",".join(pinned),
        "io.algomint.source.digest": source,
        "io.algomint.source.repository": generic,
    }
    assert job["target"]["digest"] == digest and job["tag_written"] is True

    descriptor = json.loads(await blob(client, business, doc["config"]["digest"]))
    assert descriptor["parameters"] == {**DESCRIPTOR["parameters"], "door": True, "system": f"door-{uid}"}
    assert descriptor["x-vendor"] == {"kept": True}  # unknown fields survive every plugin
    files = await files_of(client, business, "1.0")
    assert files == {
        "README.md": b"generic",
        "model.onnx": b"\x01" * 5000,
        "business/form.json": b'{"fields":["badge"]}',
        "business/function.txt": b"function saw 3 files",
        "business/job.txt": b"job for face-recog 1.0",
        "business/service.txt": f"door-{uid}:algo-{uid}:1.0:hq".encode(),
    }
    assert [layer["annotations"][mt.ANNOTATION_TITLE] for layer in doc["layers"]] == sorted(files)

    # Both business packages are listed as referrers of the generic package, in its repository.
    resp = await client.get(f"/v2/{generic}/referrers/{source}")
    listed = {m["digest"]: m for m in (await resp.json())["manifests"]}
    search_digest, _ = await manifest(client, f"business/search-{uid}/algo-{uid}", "1.0")
    assert set(listed) == {digest, search_digest}
    assert listed[digest]["artifactType"] == mt.BUSINESS
    resp = await client.get(f"/v2/{generic}/referrers/{source}", params={"artifactType": mt.BUSINESS})
    assert len((await resp.json())["manifests"]) == 2

    # The business pushes did not trigger assembly themselves (no loop), nor did the non-matching chain run.
    assert len(await jobs(client)) == 2


async def test_reassembly_is_idempotent_and_follows_a_changed_tag(app_client, plugin_service, uid, tmp_path):
    client = app_client
    refs = await _four_kinds(client, plugin_service, uid)
    chain = f"door-{uid}"
    await create_chain(client, chain, [f"generic/algo-{uid}"], [refs[0], refs[3]])
    generic, business = f"generic/algo-{uid}", f"business/door-{uid}/algo-{uid}"
    files = {"model.onnx": b"v1 weights"}

    first_source = await push_generic(client, generic, "2.0", files, tmp_path / "a")
    [first] = await wait_jobs_done(client, count=1, chain=chain)
    assert first["status"] == "succeeded" and first["tag_written"] is True
    calls = plugin_service.calls

    # The same bytes pushed again: a new job, the identical digest, and no tag write.
    again_source = await push_generic(client, generic, "2.0", files, tmp_path / "b")
    assert again_source == first_source
    second = (await wait_jobs_done(client, count=2, chain=chain))[0]
    assert second["status"] == "succeeded"
    assert second["target"]["digest"] == first["target"]["digest"]
    assert second["tag_written"] is False
    assert plugin_service.calls == calls  # the service answer came from the cache

    # The re-assembly API gives the same result, too.
    resp = await client.post(f"/api/v1/chains/{chain}/assemble", json={"packages": [f"{generic}:2.0"]})
    assert resp.status == 202, await resp.text()
    third = (await wait_jobs_done(client, count=3, chain=chain))[0]
    assert third["trigger"] == "api" and third["tag_written"] is False

    # A changed generic tag is re-assembled to a new business digest.
    changed = await push_generic(client, generic, "2.0", {"model.onnx": b"v2 weights"}, tmp_path / "c")
    fourth = (await wait_jobs_done(client, count=4, chain=chain))[0]
    assert fourth["tag_written"] is True and fourth["target"]["digest"] != first["target"]["digest"]
    digest, doc = await manifest(client, business, "2.0")
    assert digest == fourth["target"]["digest"] and doc["subject"]["digest"] == changed
    assert (await files_of(client, business, "2.0"))["model.onnx"] == b"v2 weights"


async def test_assemble_all_matching_packages(app_client, plugin_service, uid, tmp_path):
    client = app_client
    refs = await _four_kinds(client, plugin_service, uid)
    for tag in ("1.0", "1.1"):
        await push_generic(client, f"generic/a-{uid}", tag, {"m": tag.encode()}, tmp_path / tag)
    await push_generic(client, f"generic/b-{uid}", "3.0", {"m": b"b"}, tmp_path / "b")
    chain = f"late-{uid}"
    await create_chain(client, chain, [f"generic/*-{uid}"], [refs[0]])
    assert await jobs(client, chain=chain) == []  # chains act on pushes after they exist

    resp = await client.post(f"/api/v1/chains/{chain}/assemble", json={})
    assert resp.status == 202, await resp.text()
    assert len((await resp.json())["jobs"]) == 3
    done = await wait_jobs_done(client, count=3, chain=chain)
    assert sorted((j["source"]["repository"], j["source"]["tag"]) for j in done) == [
        (f"generic/a-{uid}", "1.0"), (f"generic/a-{uid}", "1.1"), (f"generic/b-{uid}", "3.0")]
    assert all(j["status"] == "succeeded" for j in done)

    bad = await client.post(f"/api/v1/chains/{chain}/assemble", json={"packages": [f"images/x-{uid}:1"]})
    assert bad.status == 422
    assert (await bad.json())["error"]["detail"]["fields"][0]["field"] == "packages.0"
    missing = await client.post(f"/api/v1/chains/{chain}/assemble", json={"packages": [f"generic/a-{uid}:9.9"]})
    assert missing.status == 422
    unknown = await client.post(f"/api/v1/chains/nope-{uid}/assemble", json={})
    assert unknown.status == 404


async def test_deleting_a_business_package_removes_it_from_the_generic_referrers(app_client, plugin_service, uid, tmp_path):
    client = app_client
    refs = await _four_kinds(client, plugin_service, uid)
    await create_chain(client, f"door-{uid}", [f"generic/algo-{uid}"], [refs[0]])
    source = await push_generic(client, f"generic/algo-{uid}", "1.0", {"m": b"m"}, tmp_path / "g")
    [job] = await wait_jobs_done(client, chain=f"door-{uid}")
    listed = await (await client.get(f"/v2/generic/algo-{uid}/referrers/{source}")).json()
    assert [m["digest"] for m in listed["manifests"]] == [job["target"]["digest"]]
    resp = await client.delete(f"/v2/business/door-{uid}/algo-{uid}/manifests/{job['target']['digest']}")
    assert resp.status == 202
    listed = await (await client.get(f"/v2/generic/algo-{uid}/referrers/{source}")).json()
    assert listed["manifests"] == []


async def test_metrics_count_jobs_by_status(app_client, plugin_service, uid, tmp_path):
    client = app_client
    refs = await _four_kinds(client, plugin_service, uid)
    await create_chain(client, f"door-{uid}", [f"generic/algo-{uid}"], [refs[0]])
    await push_generic(client, f"generic/algo-{uid}", "1.0", {"m": b"m"}, tmp_path / "g")
    await wait_jobs_done(client, chain=f"door-{uid}")
    text = await (await client.get("/metrics")).text()
    assert 'algomint_assembly_jobs{status="succeeded"} 1.0' in text
    assert 'algomint_assembly_jobs{status="failed"} 0.0' in text
    for series in ('algomint_webhook_deliveries{status="dead"}', 'algomint_full_builds{state="running"}'):
        assert series in text


async def test_management_routes_are_described(app_client):
    document = await (await app_client.get("/api/v1/openapi.json")).json()
    for path in ("/api/v1/chains", "/api/v1/chains/{name}/assemble", "/api/v1/plugins", "/api/v1/assemblies/{id}",
                 "/api/v1/subscriptions/{id}/deliveries"):
        assert path in document["paths"], path
    assert "AssemblyOut" in document["components"]["schemas"]


async def test_idle_queues_are_polled_without_write_transactions(aiohttp_client, config, tmp_path):
    """An idle assembly or full-build queue costs one read per poll, never a write
    transaction: on PostgreSQL each would queue on the write lock every replica shares."""
    from packer.fullbuild.settings import FullBuildConfig
    from proxy.api.state import DATABASE

    config = config.model_copy(update={
        "assembly": AssemblyConfig(poll_interval=0.02, workdir=tmp_path / "work"),
        "full_builds": FullBuildConfig(poll_interval=0.02),
    })
    app = create_app(config)
    db = app[DATABASE]
    opened: list[str] = []
    transaction, fetchone = db.transaction, db.fetchone

    def counted_transaction(*args, **kwargs):
        opened.append("transaction")
        return transaction(*args, **kwargs)

    async def counted_fetchone(sql, *args, **kwargs):
        if "FROM assembly_jobs j" in sql or "FROM full_builds b" in sql:
            opened.append("poll")
        return await fetchone(sql, *args, **kwargs)

    db.transaction, db.fetchone = counted_transaction, counted_fetchone
    await aiohttp_client(app)
    await asyncio.sleep(0.2)  # start-up's own writes are done
    opened.clear()
    await asyncio.sleep(0.5)
    assert opened.count("poll") >= 10 and "transaction" not in opened, opened
