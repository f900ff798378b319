"""Plugins that fail, and chains that can't be accepted, through the real server.

Each failing plugin fails its job with a precise reason, leaves the business tag as it
was, and the service goes on serving — the next good job succeeds."""

from __future__ import annotations

import json
import sys
import uuid

import pytest
from aiohttp import web

from packer.settings import AssemblyConfig, PluginsConfig
from proxy.app import create_app
from proxy.oci import mediatypes as mt
from tests.support.oci import push_blob
from tests.support.packer import (
    DESCRIPTOR,
    create_chain,
    manifest,
    push_generic,
    push_plugin,
    wait_jobs_done,
)

CAP = 256 * 1024


@pytest.fixture
def backend_kind() -> str:
    return "filesystem"  # failure handling sits above storage; both backends are covered in test_assembly


@pytest.fixture
async def bad_service(aiohttp_server):
    async def not_json(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"{this is not json", content_type="application/json")

    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=502, text="upstream down")

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/not-json", not_json)
    app.router.add_post("/boom", boom)
    return await aiohttp_server(app)


@pytest.fixture
async def client(aiohttp_client, config, bad_service, tmp_path):
    config = config.model_copy(update={
        "plugins": PluginsConfig.model_validate({
            "service": {"allow": [str(bad_service.make_url("/"))], "retries": 1, "retry_backoff": 0.01},
            "function": {"timeout": 1, "memory_mb": 256},
            "job": {"timeout": 1},
        }),
        "assembly": AssemblyConfig(package_cap=CAP, poll_interval=0.5, workdir=tmp_path / "work"),
    })
    return await aiohttp_client(create_app(config))


async def _push_raw_plugin(client, name: str, config: dict, files: dict[str, bytes], tag: str = "1.0") -> None:
    """A plugin pushed with plain registry calls: nothing checks it until a job runs it."""
    config_bytes = json.dumps(config).encode()
    layers = []
    for path, data in files.items():
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": len(data),
                       "digest": await push_blob(client, f"plugins/{name}", data),
                       "annotations": {mt.ANNOTATION_TITLE: path}})
    manifest_doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.PLUGIN,
                    "config": {"mediaType": mt.PLUGIN_CONFIG, "size": len(config_bytes),
                               "digest": await push_blob(client, f"plugins/{name}", config_bytes)},
                    "layers": layers}
    resp = await client.put(f"/v2/plugins/{name}/manifests/{tag}", data=json.dumps(manifest_doc),
                            headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201, await resp.text()


def _fn(body: str) -> dict[str, bytes]:
    return {"transform.py": f"def transform(package, context):\n{body}\n".encode()}


FAILURES = [
    ("function", {}, _fn("    while True: pass"), "function timed out after 1s"),
    ("function", {}, _fn("    raise RuntimeError('crashed on purpose')"), "function failed: RuntimeError: crashed on purpose"),
    ("function", {}, _fn("    package['files']['big'] = b'0' * (2 * 256 * 1024)"), "over the 262144-byte package cap"),
    ("function", {}, _fn("    package['files']['../../etc/cron.d/x'] = b'1'"), "path traversal"),
    ("function", {}, _fn("    open('/tmp/outside-' + context['system'], 'w')"), "blocked: writing outside the work directory"),
    ("job", {"command": [sys.executable, "-c", "open('../escape', 'w').write('x')"]}, {}, "wrote outside its work directory: escape"),
    ("job", {"command": [sys.executable, "-c", "import os; os.symlink('/etc/passwd', 'files/p')"]}, {}, "link out of the work directory"),
    ("job", {"command": [sys.executable, "-c", "import time; time.sleep(30)"]}, {}, "job timed out after 1s"),
    ("job", {"command": [sys.executable, "-c", "import sys; sys.exit(7)"]}, {}, "job exited with status 7"),
    ("service", {"url": "/not-json"}, {}, "service returned invalid JSON"),
    ("service", {"url": "/boom"}, {}, "failed after 2 attempts: HTTP 502"),
    ("file", {"files": [{"source": "x.json", "path": "../x.json"}]}, {"x.json": b"{}"}, "path traversal"),
    ("file", {"files": [{"source": "p.json", "merge_patch": "descriptor"}]}, {"p.json": b'{"name": null}'},
     "algorithm descriptor invalid: name: Field required"),
]


@pytest.mark.parametrize("kind,options,files,reason", FAILURES, ids=[f"{k}-{r[:30]}" for k, _, _, r in FAILURES])
async def test_failing_plugin_fails_the_job_and_changes_nothing(client, bad_service, tmp_path, kind, options, files, reason):
    uid = uuid.uuid4().hex[:8]
    if kind == "service":
        options = {"url": str(bad_service.make_url(options["url"]))}
    await push_plugin(client, f"good-{uid}", "1.0", "file", {}, {"good.txt": b"good"})
    chain = f"c-{uid}"
    await create_chain(client, chain, [f"generic/a-{uid}"], [f"plugins/good-{uid}:1.0"])
    generic, business = f"generic/a-{uid}", f"business/c-{uid}/a-{uid}"
    await push_generic(client, generic, "1.0", {"model": b"m"}, tmp_path / "g")
    [good] = await wait_jobs_done(client, chain=chain)
    assert good["status"] == "succeeded"

    # Plugin tags are immutable: the broken plugin is a new version; references are
    # resolved when a job starts, so nothing checks it before then.
    await _push_raw_plugin(client, f"bad-{uid}", {"name": f"bad-{uid}", "version": "2.0", "kind": kind, **options}, files,
                           tag="2.0")
    resp = await client.put(f"/api/v1/chains/{chain}", json={"match": [f"generic/a-{uid}"],
                                                            "plugins": [f"plugins/good-{uid}:1.0", f"plugins/bad-{uid}:2.0"]})
    if resp.status == 422:
        # A file plugin's options are checked when the chain is saved; since a version
        # cannot change afterwards, such a plugin never reaches a job.
        assert kind == "file" and reason in await resp.text()
        return
    assert resp.status == 200, await resp.text()
    await push_generic(client, generic, "1.0", {"model": b"changed"}, tmp_path / "h")
    failed = (await wait_jobs_done(client, count=2, chain=chain))[0]
    assert failed["status"] == "failed"
    assert reason in failed["error"]["reason"], failed["error"]
    assert failed["error"]["plugin"] == f"plugins/bad-{uid}:2.0"
    assert failed["target"]["digest"] is None and failed["tag_written"] is None
    detail = await (await client.get(f"/api/v1/assemblies/{failed['id']}")).json()
    assert reason in detail["logs"]

    digest, _ = await manifest(client, business, "1.0")
    assert digest == good["target"]["digest"]  # nothing half-assembled was tagged
    assert (await client.get("/healthz")).status == 200

    # The service keeps serving and nothing leaks into the next job.
    resp = await client.put(f"/api/v1/chains/{chain}", json={"match": [f"generic/a-{uid}"], "plugins": [f"plugins/good-{uid}:1.0"]})
    assert resp.status == 200
    await push_generic(client, generic, "1.0", {"model": b"again"}, tmp_path / "i")
    after = (await wait_jobs_done(client, count=3, chain=chain))[0]
    assert after["status"] == "succeeded" and after["tag_written"] is True


async def test_source_package_problems(client, tmp_path):
    uid = uuid.uuid4().hex[:8]
    await push_plugin(client, f"p-{uid}", "1.0", "file", {}, {"x": b"x"})
    await create_chain(client, f"c-{uid}", ["generic/**"], [f"plugins/p-{uid}:1.0"])
    bad_descriptor = {k: v for k, v in DESCRIPTOR.items() if k != "name"}
    await push_generic(client, f"generic/nameless-{uid}", "1.0", {"m": b"m"}, tmp_path / "a", descriptor=bad_descriptor)
    await push_generic(client, f"generic/big-{uid}", "1.0", {"m": b"0" * (CAP + 1)}, tmp_path / "b")
    done = await wait_jobs_done(client, count=2, chain=f"c-{uid}")
    reasons = {j["source"]["repository"]: j["error"]["reason"] for j in done}
    assert reasons[f"generic/nameless-{uid}"] == "source package: algorithm descriptor invalid: name: Field required"
    assert "over the 262144-byte package cap" in reasons[f"generic/big-{uid}"]


@pytest.mark.parametrize("body,field,message", [
    ({"match": ["generic/*"], "plugins": ["plugins/missing-x:1.0"]}, "plugins.0", "not found"),
    ({"match": ["generic/*"], "plugins": ["images/x:1.0"]}, "plugins.0", "not in the plugins namespace"),
    ({"match": ["generic/*"], "plugins": ["plugins/x"]}, "plugins.0", "needs a tag or a digest"),
    ({"match": ["Generic/*"], "plugins": ["plugins/x:1"]}, "match", "not a repository glob"),
    ({"match": [], "plugins": ["plugins/x:1"]}, "match", "at least 1"),
    ({"match": ["generic/*"], "plugins": []}, "plugins", "at least 1"),
    ({"match": ["generic/*"], "plugins": ["plugins/x:1"], "extra": 1}, "extra", "Extra inputs"),
])
async def test_chain_creation_is_validated(client, body, field, message):
    name = f"c-{uuid.uuid4().hex[:8]}"
    resp = await client.post("/api/v1/chains", json={"name": name, **body})
    assert resp.status == 422, await resp.text()
    fields = (await resp.json())["error"]["detail"]["fields"]
    assert fields[0]["field"] == field and message in fields[0]["message"], fields
    assert (await client.get(f"/api/v1/chains/{name}")).status == 404


async def test_chain_with_an_unusable_plugin_is_refused(client):
    uid = uuid.uuid4().hex[:8]
    await _push_raw_plugin(client, f"bad-{uid}", {"name": "bad", "version": "1.0", "kind": "file",
                                                  "files": [{"source": "x", "path": "/etc/x"}]}, {"x": b"x"})
    await _push_raw_plugin(client, f"odd-{uid}", {"name": "odd", "version": "1.0", "kind": "telepathy"}, {})
    for name, message in ((f"bad-{uid}", "absolute path"), (f"odd-{uid}", "config kind")):
        resp = await client.post("/api/v1/chains", json={"name": f"c-{uid}", "match": ["generic/*"],
                                                         "plugins": [f"plugins/{name}:1.0"]})
        assert resp.status == 422
        assert message in (await resp.json())["error"]["detail"]["fields"][0]["message"]


async def test_chain_with_a_missing_second_plugin_names_it(client):
    uid = uuid.uuid4().hex[:8]
    await push_plugin(client, f"ok-{uid}", "1.0", "file", {}, {"x": b"x"})
    resp = await client.post("/api/v1/chains", json={"name": f"c-{uid}", "match": ["generic/*"],
                                                     "plugins": [f"plugins/ok-{uid}:1.0", f"plugins/ok-{uid}:2.0"]})
    assert resp.status == 422
    [problem] = (await resp.json())["error"]["detail"]["fields"]
    assert problem == {"field": "plugins.1", "message": f"plugin plugins/ok-{uid}:2.0 not found"}


async def test_chain_crud(client):
    uid = uuid.uuid4().hex[:8]
    digest = await push_plugin(client, f"p-{uid}", "1.0", "file", {}, {"x": b"x"})
    created = await create_chain(client, f"c-{uid}", ["generic/*"], [f"plugins/p-{uid}@{digest}"], {"k": "v"})
    assert created["source"] == "api" and created["params"] == {"k": "v"}
    assert (await client.post("/api/v1/chains", json={"name": f"c-{uid}", "match": ["generic/*"],
                                                      "plugins": [f"plugins/p-{uid}:1.0"]})).status == 409
    listing = await (await client.get("/api/v1/chains")).json()
    assert f"c-{uid}" in [c["name"] for c in listing["items"]]
    resp = await client.put(f"/api/v1/chains/c-{uid}", json={"match": ["generic/x"], "plugins": [f"plugins/p-{uid}:1.0"]})
    assert (await resp.json())["match"] == ["generic/x"]
    assert (await client.delete(f"/api/v1/chains/c-{uid}")).status == 204
    assert (await client.delete(f"/api/v1/chains/c-{uid}")).status == 404
    assert (await client.put(f"/api/v1/chains/c-{uid}", json={"match": ["a"], "plugins": ["plugins/a:1"]})).status == 404


async def test_plugins_api(client):
    uid = uuid.uuid4().hex[:8]
    digest = await push_plugin(client, f"p-{uid}", "1.0", "function", {"timeout": 3}, {"t.py": b"def transform(p, c): pass"})
    listing = await (await client.get("/api/v1/plugins", params={"limit": "500"})).json()
    assert {"repository": f"plugins/p-{uid}", "name": f"p-{uid}", "tags": ["1.0"]} in listing["items"]
    detail = await (await client.get(f"/api/v1/plugins/p-{uid}")).json()
    [version] = detail["versions"]
    assert version["digest"] == digest
    assert version["config"] == {"name": f"p-{uid}", "version": "1.0", "kind": "function", "timeout": 3}
    assert version["files"][0]["path"] == "t.py"
    bad = await client.post("/api/v1/plugins", json={"name": f"q-{uid}", "version": "1.0", "kind": "function",
                                                     "files": [{"path": "t.py", "data": "eCA9ICg="}]})
    message = (await bad.json())["error"]["detail"]["fields"][0]["message"]
    assert bad.status == 422 and "does not compile" in message
    # A refused push names the version asked for, never a made-up digest.
    assert message.startswith(f"plugins/q-{uid}:1.0: ") and "sha256:" not in message, message
    assert (await client.get(f"/api/v1/plugins/none-{uid}")).status == 404


async def test_chain_and_plugin_routes_ask_about_their_repositories(aiohttp_client, config, tmp_path):
    from packer.chains import ChainSpec
    from proxy.api.state import PACKER, POLICY
    from proxy.oci.errors import Errors, RegistryError
    from proxy.service.policy import SYSTEM, Action

    class BusinessDoorOnly:
        """Manage only under business/door* and plugins/door*; no pulls of business/other*."""

        async def check(self, request):
            repo = request.repository or ""
            if request.action is Action.MANAGE and not repo.startswith(("business/door", "plugins/door")):
                raise RegistryError(Errors.DENIED, {"repository": repo})
            if request.action is Action.PULL and repo.startswith("business/other"):
                raise RegistryError(Errors.DENIED, {"repository": repo})

    app = create_app(config.model_copy(update={"assembly": AssemblyConfig(workdir=tmp_path / "work")}))
    app[POLICY].add(BusinessDoorOnly())
    client = await aiohttp_client(app)
    uid = uuid.uuid4().hex[:8]
    await push_plugin(client, f"door-{uid}", "1.0", "file", {}, {"x": b"x"})
    await create_chain(client, f"door-{uid}", ["generic/*"], [f"plugins/door-{uid}:1.0"])
    await client.app[PACKER].chains.create(ChainSpec(name=f"other-{uid}", match=["generic/*"],
                                                     plugins=[f"plugins/door-{uid}:1.0"]), SYSTEM)
    listed = [c["name"] for c in (await (await client.get("/api/v1/chains")).json())["items"]]
    assert f"door-{uid}" in listed and f"other-{uid}" not in listed
    assert (await client.get(f"/api/v1/chains/other-{uid}")).status == 403
    denied = await client.post("/api/v1/chains", json={"name": f"other2-{uid}", "match": ["generic/*"],
                                                        "plugins": [f"plugins/door-{uid}:1.0"]})
    assert denied.status == 403 and (await denied.json())["error"]["code"] == "forbidden"
    assert (await client.post(f"/api/v1/chains/other-{uid}/assemble", json={})).status == 403
    assert (await client.post("/api/v1/chains/reload")).status == 403  # the file is registry-wide
    assert (await client.get("/api/v1/subscriptions")).status == 403


async def test_a_refused_business_push_fails_the_job(aiohttp_client, config, tmp_path):
    """Before writing, assembly asks the policy as any push would (a frozen tag says no)."""
    from proxy.api.state import POLICY
    from proxy.oci.errors import Errors, RegistryError
    from proxy.service.policy import Action

    class Frozen:
        async def check(self, request):
            repo = request.repository or ""
            if request.action is Action.PUSH and repo.startswith("business/") and request.reference == "1.0":
                raise RegistryError(Errors.DENIED, message=f"{request.repository}:1.0 is frozen")

    app = create_app(config.model_copy(update={"assembly": AssemblyConfig(workdir=tmp_path / "work")}))
    app[POLICY].add(Frozen())
    client = await aiohttp_client(app)
    uid = uuid.uuid4().hex[:8]
    await push_plugin(client, f"p-{uid}", "1.0", "file", {}, {"x": b"x"})
    await create_chain(client, f"c-{uid}", [f"generic/a-{uid}"], [f"plugins/p-{uid}:1.0"])
    await push_generic(client, f"generic/a-{uid}", "1.0", {"m": b"m"}, tmp_path / "g")
    [job] = await wait_jobs_done(client, chain=f"c-{uid}")
    assert job["status"] == "failed"
    assert job["error"]["reason"] == f"registry: DENIED: business/c-{uid}/a-{uid}:1.0 is frozen"
    assert (await client.get(f"/v2/business/c-{uid}/a-{uid}/manifests/1.0")).status == 404
