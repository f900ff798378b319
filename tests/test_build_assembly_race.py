"""The build/assembly race, decided one way, on both backends.

- A build request whose package still has assembly jobs queued or running waits for them
  (``full_builds.assembly_wait``) and builds what they wrote; past the wait it is refused
  with 409 naming the jobs.
- From its acceptance, a build holds the business tag and the generic version: a re-push
  is refused (``DENIED`` naming the build); an assembly job for the business tag waits for
  the build and, if it then re-assembles identical content, succeeds as a no-op.
- A write that slipped past the hold (it passed its check before the build was accepted)
  fails the build before anything is frozen.

Barriers, not sleeps: the service plugin blocks on an event; the build's run waits on one."""

from __future__ import annotations

import asyncio
import base64
import uuid

import pytest
from aiohttp import web

from packer.fullbuild.builder import FullBuilder
from packer.settings import AssemblyConfig, PluginsConfig
from proxy.api.state import REGISTRY
from proxy.app import create_app
from proxy.oci import mediatypes as mt
from tests.support.oci import digest_of, error_code
from tests.support.packer import create_chain, jobs, push_plugin, wait_for, wait_jobs_done
from tests.support.tarlayers import build_image
from tests.test_fullbuild_e2e import descriptor, fb_config, keys, push_generic, push_image, thin_manifest  # noqa: F401


class GatedService:
    """A service plugin that waits on ``gate`` while ``entered`` tells the test it is inside."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def transform(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.entered.set()
        await self.gate.wait()
        package = body["package"]
        package["files"].append({"path": "business/site.txt", "data": base64.b64encode(b"door").decode()})
        return web.json_response({"package": package})


@pytest.fixture
async def gated(aiohttp_server):
    service = GatedService()
    app = web.Application()
    app.router.add_post("/transform", service.transform)
    server = await aiohttp_server(app)
    service.url, service.origin = str(server.make_url("/transform")), str(server.make_url("/"))
    return service


def _client_config(fb_config, gated, tmp_path, wait: float):
    return fb_config.model_copy(update={
        "plugins": PluginsConfig.model_validate({"service": {"allow": [gated.origin], "retry_backoff": 0.01,
                                                             "timeout": 60}}),
        "assembly": AssemblyConfig(poll_interval=0.2, workdir=tmp_path / "work"),
        "full_builds": fb_config.full_builds.model_copy(update={"assembly_wait": wait, "poll_interval": 0.2}),
    })


class Setup:
    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.chain = f"door{uid}"
        self.image = f"images/face{uid}"
        self.generic = f"generic/face{uid}"
        self.business = f"business/door{uid}/face{uid}"
        self.package = f"{self.business}:1.0"


async def _setup(client, gated, tmp_path) -> Setup:
    s = Setup(uuid.uuid4().hex[:10])
    await push_image(client, s.image, build_image(tmp_path / "img"))
    await push_plugin(client, f"svc-{s.uid}", "1.0", "service", {"url": gated.url})
    await create_chain(client, s.chain, [s.generic], [f"plugins/svc-{s.uid}:1.0"])
    await _push(client, s, b"first\n")
    [job] = await wait_jobs_done(client, chain=s.chain)
    assert job["status"] == "succeeded", job
    return s


async def _push(client, s: Setup, readme: bytes) -> str:
    return await push_generic(client, s.generic, "1.0", descriptor(f"{s.image}:v1"), {"README.md": readme})


async def _digest(client, repo: str, tag: str) -> str:
    return (await client.server.app[REGISTRY].stat_manifest(repo, tag)).digest


async def _build(client, build_id: str) -> dict:
    async def done():
        build = await (await client.get(f"/api/v1/full-builds/{build_id}")).json()
        return build if build["state"] in ("succeeded", "failed") else None

    return await wait_for(done, timeout=60)


@pytest.fixture
async def waiting(aiohttp_client, fb_config, gated, tmp_path):
    return await aiohttp_client(create_app(_client_config(fb_config, gated, tmp_path, wait=60)))


@pytest.fixture
async def impatient(aiohttp_client, fb_config, gated, tmp_path):
    return await aiohttp_client(create_app(_client_config(fb_config, gated, tmp_path, wait=0)))


async def test_build_waits_for_pending_assembly_and_freezes_its_result(waiting, gated, tmp_path):
    client = waiting
    s = await _setup(client, gated, tmp_path)
    gated.gate.clear()
    gated.entered.clear()
    await _push(client, s, b"second\n")  # a re-push with changed content: its job blocks in the plugin
    await gated.entered.wait()

    request = asyncio.ensure_future(client.post("/api/v1/full-builds", json={"package": s.package, "license": "soft"}))
    # While the job runs, nothing is accepted: no build exists for the package.
    for _ in range(5):
        await asyncio.sleep(0)
    listing = await (await client.get("/api/v1/full-builds", params={"package": s.package})).json()
    assert listing["items"] == [] and not request.done()

    gated.gate.set()
    resp = await request
    assert resp.status == 202, await resp.text()
    build = await _build(client, (await resp.json())["id"])
    assert build["state"] == "succeeded", build

    [newest, first] = await jobs(client, chain=s.chain)
    assert newest["status"] == "succeeded" and first["status"] == "succeeded"
    # The build froze what the re-push's assembly wrote, not the earlier package.
    assert build["source_digest"] == newest["target"]["digest"] == await _digest(client, s.business, "1.0")
    assert newest["source"]["digest"] == await _digest(client, s.generic, "1.0")


async def test_build_past_the_wait_is_refused_naming_the_job(impatient, gated, tmp_path):
    client = impatient
    s = await _setup(client, gated, tmp_path)
    gated.gate.clear()
    gated.entered.clear()
    await _push(client, s, b"second\n")
    await gated.entered.wait()
    [pending, _] = await jobs(client, chain=s.chain)

    resp = await client.post("/api/v1/full-builds", json={"package": s.package, "license": "soft"})
    assert resp.status == 409, await resp.text()
    body = (await resp.json())["error"]
    assert f"{pending['id']} (running)" in body["message"]
    assert body["detail"]["assemblies"] == [{"id": pending["id"], "status": "running"}]
    gated.gate.set()
    [done, _] = await wait_jobs_done(client, count=2, chain=s.chain)
    assert done["status"] == "succeeded"
    # Once the job has finished, the same request is accepted.
    resp = await client.post("/api/v1/full-builds", json={"package": s.package, "license": "soft"})
    assert resp.status == 202, await resp.text()
    assert (await _build(client, (await resp.json())["id"]))["state"] == "succeeded"


def _hold(monkeypatch, step: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Full builds reach ``step`` of ``FullBuilder``, then wait on ``release``."""
    started, release = asyncio.Event(), asyncio.Event()
    original = getattr(FullBuilder, step)

    async def held(self, *args, **kwargs):
        started.set()
        await release.wait()
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(FullBuilder, step, held)
    return started, release


@pytest.fixture
def held_builds(monkeypatch):
    return _hold(monkeypatch, "run")  # before the build reads anything


async def test_repush_during_a_build_is_refused_and_reassembly_waits(waiting, gated, tmp_path, held_builds):
    client = waiting
    started, release = held_builds
    s = await _setup(client, gated, tmp_path)
    before = await _digest(client, s.business, "1.0")
    resp = await client.post("/api/v1/full-builds", json={"package": s.package, "license": "soft"})
    assert resp.status == 202, await resp.text()
    build_id = (await resp.json())["id"]
    await started.wait()

    # A re-push of the generic version is refused at once, naming the build.
    config = descriptor(f"{s.image}:v1")
    resp = await client.put(f"/v2/{s.generic}/manifests/1.0", data=thin_manifest(config, {}, mt.ALGORITHM),
                            headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    assert build_id in (await resp.json())["errors"][0]["message"]
    assert (await client.delete(f"/v2/{s.generic}/manifests/1.0")).status == 403

    # A re-assembly requested meanwhile waits for the build instead of racing it.
    resp = await client.post(f"/api/v1/chains/{s.chain}/assemble", json={"packages": [f"{s.generic}:1.0"]})
    assert resp.status in (200, 202), await resp.text()
    [queued, _] = await jobs(client, chain=s.chain)
    assert queued["status"] == "queued"
    for _ in range(3):
        await asyncio.sleep(0.25)  # longer than the assembly poll interval: the job is passed over
        [still, _] = await jobs(client, chain=s.chain)
        assert still["status"] == "queued"

    release.set()
    build = await _build(client, build_id)
    assert build["state"] == "succeeded", build
    # The job then runs: identical content on the now frozen tag is a no-op, not a failure.
    [after, _] = await wait_jobs_done(client, count=2, chain=s.chain)
    assert after["status"] == "succeeded" and after["tag_written"] is False, after
    assert await _digest(client, s.business, "1.0") == before == build["source_digest"]


async def test_write_slipping_past_the_hold_fails_the_build_and_releases_it(waiting, gated, tmp_path, monkeypatch):
    client = waiting
    started, release = _hold(monkeypatch, "_license_files")  # after the inputs were read and checked
    s = await _setup(client, gated, tmp_path)
    resp = await client.post("/api/v1/full-builds", json={"package": s.package, "license": "soft"})
    build_id = (await resp.json())["id"]
    await started.wait()
    # A write that passed its checks before the build was accepted lands during it
    # (written through the service, as the push would have been).
    service = client.server.app[REGISTRY]
    moved = thin_manifest(descriptor(f"{s.image}:v1"), {}, mt.ALGORITHM)
    config = descriptor(f"{s.image}:v1")
    session = await service.backend.start_upload(s.generic)

    async def one():
        yield config
    await service.backend.finish_upload(s.generic, session.upload_id, digest_of(config), one())
    await service.put_manifest(s.generic, "1.0", moved, mt.OCI_MANIFEST)

    release.set()
    build = await _build(client, build_id)
    assert build["state"] == "failed"
    assert f"{s.generic}:1.0 changed during the build" in build["error"] and "nothing was frozen" in build["error"]
    # Nothing frozen and the hold is gone: the version can be pushed again, and the
    # assembly the landed write queued has run.
    jobs_after = await wait_jobs_done(client, count=2, chain=s.chain)
    assert all(j["status"] == "succeeded" for j in jobs_after), jobs_after
    assert (await client.get(f"/v2/{s.business}/manifests/1.0-soft")).status == 404
    await _push(client, s, b"third\n")
