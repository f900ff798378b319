"""Online garbage collection of the embedded storage, through real HTTP.

Content is aged by moving file times back past the grace period (``_age``): what was
stored before the call is old, whatever is pushed after is fresh."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import time
from pathlib import Path

import pytest

from proxy.api.manage.gc import GC_RUNS
from proxy.api.state import DATABASE
from proxy.app import create_app
from proxy.cli import main
from proxy.oci import mediatypes as mt
from tests.conftest import make_config
from tests.support.auth import ADMIN, ROLE_USERS, auth_env, basic  # noqa: F401 - auth_env is a fixture
from tests.support.oci import descriptor, digest_of, image_manifest, push_blob, push_image

GRACE = 600.0


def _age(root: Path, seconds: float = 2 * GRACE) -> None:
    """Make everything stored so far older than the grace period."""
    past = time.time() - seconds
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                os.utime(os.path.join(directory, name), (past, past))


def _content_files(root: Path) -> dict[str, int]:
    blobs = root / "blobs"
    return {f"{p.parent.parent.name}:{p.name}": p.stat().st_size for p in blobs.rglob("*") if p.is_file()}


async def _gc(client, dry_run: bool = False, headers: dict | None = None) -> dict:
    resp = await client.post("/api/v1/gc", json={"dry_run": dry_run}, headers=headers or {})
    assert resp.status == 202, await resp.text()
    run = await resp.json()
    assert resp.headers["Location"] == f"/api/v1/gc/{run['id']}"
    while run["status"] == "running":
        await asyncio.sleep(0.05)
        resp = await client.get(f"/api/v1/gc/{run['id']}", headers=headers or {})
        assert resp.status == 200
        run = await resp.json()
    assert run["status"] == "succeeded", run
    return run


async def _pull_all(client, repo: str, reference: str) -> None:
    """The manifest and every blob it names come back whole."""
    resp = await client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": mt.OCI_MANIFEST})
    assert resp.status == 200, (reference, await resp.text())
    document = json.loads(await resp.read())
    for d in [document["config"], *document["layers"]]:
        blob = await client.get(f"/v2/{repo}/blobs/{d['digest']}")
        assert blob.status == 200, (reference, d["digest"])
        assert digest_of(await blob.read()) == d["digest"]


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
async def fs_client(aiohttp_client, tmp_path: Path):
    app = create_app(make_config(tmp_path, "filesystem", gc__grace_period=GRACE))
    return await aiohttp_client(app)


async def test_deleted_content_is_reclaimed_and_dry_run_changes_nothing(fs_client, storage, repo):
    client = fs_client
    shared = os.urandom(2048)
    kept_digest, _ = await push_image(client, repo, "kept", [shared, os.urandom(1024)])
    gone_layer = os.urandom(64 * 1024)
    gone_digest, _ = await push_image(client, repo, "gone", [shared, gone_layer])
    resp = await client.delete(f"/v2/{repo}/manifests/{gone_digest}")
    assert resp.status == 202
    stray = await push_blob(client, repo, os.urandom(4096))  # uploaded, never referenced
    resp = await client.delete(f"/v2/{repo}/blobs/{stray}")
    assert resp.status == 202
    _age(storage)
    before = _content_files(storage)

    dry = await _gc(client, dry_run=True)
    assert dry["dry_run"] is True and dry["phase"] == "done"
    assert dry["counts"]["blobs_removed"] == 3  # the deleted manifest, its own layer, the stray blob
    assert dry["counts"]["bytes_reclaimed"] == before[gone_digest] + len(gone_layer) + 4096
    assert _content_files(storage) == before

    run = await _gc(client)
    assert run["counts"]["blobs_removed"] == 3
    assert run["counts"]["bytes_reclaimed"] == dry["counts"]["bytes_reclaimed"]
    after = _content_files(storage)
    assert set(before) - set(after) == {gone_digest, digest_of(gone_layer), stray}
    await _pull_all(client, repo, "kept")
    resp = await client.get(f"/v2/{repo}/blobs/{digest_of(gone_layer)}")
    assert resp.status == 404
    assert not any((storage / "_gc").iterdir())

    # Nothing left to do: a second run removes nothing.
    again = await _gc(client)
    assert again["counts"]["blobs_removed"] == 0 and again["counts"]["layer_links_removed"] == 0

    listing = await (await client.get("/api/v1/gc")).json()
    assert [r["id"] for r in listing["items"]] == [again["id"], run["id"], dry["id"]]
    metrics = await (await client.get("/metrics")).text()
    assert f"algomint_gc_reclaimed_bytes_total {float(run['counts']['bytes_reclaimed'])}" in metrics
    assert 'algomint_gc_runs_total{dry_run="true",status="succeeded"} 1.0' in metrics
    audit = await (await client.get("/api/v1/audit", params={"action": "gc.run"})).json()
    recorded = {item["reference"]: item for item in audit["items"]}
    assert recorded[run["id"]]["detail"]["bytes_reclaimed"] == run["counts"]["bytes_reclaimed"]


async def test_fresh_uploads_survive_within_the_grace_period(fs_client, storage, repo):
    client = fs_client
    old = await push_blob(client, repo, os.urandom(1000))
    await client.delete(f"/v2/{repo}/blobs/{old}")
    _age(storage)
    pending = await push_blob(client, repo, os.urandom(1000))  # its manifest is yet to come
    await _gc(client)
    assert (await client.head(f"/v2/{repo}/blobs/{pending}")).status == 200
    assert old not in _content_files(storage)


async def test_gc_under_concurrent_pushes_loses_nothing(fs_client, storage, repo):
    """Pushes race repeated collections: some re-upload content a collection is about to
    reclaim, some reference blobs still linked but unreferenced (and old) without
    uploading them again, as clients do after a HEAD. Every manifest accepted keeps every
    blob it names; a refused one (its blob went first) is pushed again after uploading."""
    client = fs_client
    old_layers = [os.urandom(4096) for _ in range(48)]
    for i in range(0, len(old_layers), 8):
        digest, _ = await push_image(client, repo, f"old{i}", old_layers[i : i + 8])
        await client.delete(f"/v2/{repo}/manifests/{digest}")
    _age(storage)
    accepted: list[str] = []
    refused = 0
    stop = asyncio.Event()

    async def push(tag: str, layers: list[bytes], upload: list[bytes]) -> bool:
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": tag}).encode()
        for blob in [config, *upload]:
            await push_blob(client, repo, blob)
        resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=image_manifest(config, layers),
                                headers={"Content-Type": mt.OCI_MANIFEST})
        if resp.status == 201:
            return True
        assert resp.status == 400 and "MANIFEST_BLOB_UNKNOWN" in await resp.text()
        return False

    async def pusher(worker: int) -> None:
        nonlocal refused
        for i in range(12):
            tag = f"w{worker}-{i}"
            linked = old_layers[(worker * 12 + i) % len(old_layers)]
            fresh = os.urandom(512)
            if (await client.head(f"/v2/{repo}/blobs/{digest_of(linked)}")).status == 200 and i % 2:
                upload = [fresh]  # the client trusts the HEAD and skips the upload
            else:
                upload = [linked, fresh]
            if not await push(tag, [linked, fresh], upload):
                refused += 1
                assert await push(tag, [linked, fresh], [linked, fresh])
            accepted.append(tag)

    async def collector() -> int:
        runs = 0
        while not stop.is_set():
            await _gc(client)
            runs += 1
        return runs

    gc_task = asyncio.create_task(collector())
    await asyncio.gather(*(pusher(w) for w in range(4)))
    stop.set()
    assert await gc_task >= 1
    _age(storage)  # everything is now old: only reachability keeps it
    final = await _gc(client)
    assert final["counts"]["blobs_removed"] == 0 and final["counts"]["layer_links_removed"] == 0
    for tag in accepted:
        await _pull_all(client, repo, tag)


async def test_manifest_put_between_mark_and_sweep_keeps_its_blobs(fs_client, storage, repo):
    """The fence, deterministically: a collection pauses after marking; a manifest naming
    an old, unreferenced (still linked) blob is pushed without uploading it; the sweep
    that follows must spare that blob."""
    client = fs_client
    layer = os.urandom(5000)
    digest, _ = await push_image(client, repo, "old", [layer])
    await client.delete(f"/v2/{repo}/manifests/{digest}")
    config = b'{"architecture":"amd64","os":"linux","late":true}'
    await push_blob(client, repo, config)
    _age(storage)
    collector = client.app[GC_RUNS].collector
    marked, resume = asyncio.Event(), asyncio.Event()
    mark = collector._mark

    async def paused_mark(*args, **kwargs):
        result = await mark(*args, **kwargs)
        marked.set()
        await resume.wait()
        return result

    collector._mark = paused_mark
    resp = await client.post("/api/v1/gc", json={"dry_run": False})
    run_id = (await resp.json())["id"]
    await asyncio.wait_for(marked.wait(), 30)
    busy = await client.post("/api/v1/gc", json={"dry_run": True})
    assert busy.status == 409 and (await busy.json())["error"]["detail"]["run"]["id"] == run_id
    resp = await client.put(f"/v2/{repo}/manifests/late", data=image_manifest(config, [layer]),
                            headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201
    resume.set()
    await client.app[GC_RUNS].wait()
    run = await (await client.get(f"/api/v1/gc/{run_id}")).json()
    assert run["status"] == "succeeded"
    await _pull_all(client, repo, "late")
    collector._mark = mark
    _age(storage)
    assert (await _gc(client))["counts"]["blobs_removed"] == 0
    await _pull_all(client, repo, "late")


async def test_upload_of_reclaimed_content_during_the_sweep_keeps_it(fs_client, storage, repo):
    """Content no repository links is about to go when a client uploads the same bytes
    (stored already, so only a link is written): the sweep finds the new link and keeps it."""
    client = fs_client
    data = os.urandom(6000)
    digest = await push_blob(client, repo, data)
    await client.delete(f"/v2/{repo}/blobs/{digest}")
    _age(storage)
    collector = client.app[GC_RUNS].collector
    reached, resume = asyncio.Event(), asyncio.Event()
    reclaim = collector._reclaim

    async def paused_reclaim(*args, **kwargs):
        reached.set()
        await resume.wait()
        return await reclaim(*args, **kwargs)

    collector._reclaim = paused_reclaim
    await client.post("/api/v1/gc", json={"dry_run": False})
    await asyncio.wait_for(reached.wait(), 30)
    assert await push_blob(client, repo, data) == digest
    resume.set()
    await client.app[GC_RUNS].wait()
    collector._reclaim = reclaim
    resp = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert resp.status == 200 and await resp.read() == data


async def test_untagged_collection_keeps_what_frozen_indexes_and_live_subjects_reach(aiohttp_client, tmp_path, repo):
    app = create_app(make_config(tmp_path, "filesystem", gc__grace_period=GRACE, gc__delete_untagged=True))
    client = await aiohttp_client(app)
    storage = tmp_path / "storage"
    config = b'{"architecture":"amd64","os":"linux"}'
    children = []
    for arch in ("amd64", "arm64"):
        layer = os.urandom(700)
        await push_blob(client, repo, config)
        await push_blob(client, repo, layer)
        manifest = image_manifest(config, [layer], annotations={"arch": arch})
        digest = digest_of(manifest)
        resp = await client.put(f"/v2/{repo}/manifests/{digest}", data=manifest,
                                headers={"Content-Type": mt.OCI_MANIFEST})
        assert resp.status == 201
        children.append((digest, manifest, layer))
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                        "manifests": [descriptor(m, mt.OCI_MANIFEST) for _, m, _ in children]}).encode()
    index_digest = digest_of(index)
    resp = await client.put(f"/v2/{repo}/manifests/{index_digest}", data=index, headers={"Content-Type": mt.OCI_INDEX})
    assert resp.status == 201
    # A full build froze this index (untagged here): a root, like every frozen digest.
    await app[DATABASE].execute(
        "INSERT INTO frozen_tags (repository, tag, digest, build_id, package) VALUES (?,?,?,?,?)",
        (repo, "1.0-full", index_digest, "b1", f"{repo}:1.0"))
    # A referrer of a live subject, and one whose subject is gone.
    signature = image_manifest(b"{}", [], subject=descriptor(children[0][1], mt.OCI_MANIFEST),
                               artifactType="application/vnd.example.sig")
    await push_blob(client, repo, b"{}")
    resp = await client.put(f"/v2/{repo}/manifests/{digest_of(signature)}", data=signature,
                            headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201
    orphan_layer = os.urandom(900)
    orphan_digest, _ = await push_image(client, repo, "orphan", [orphan_layer])
    await client.delete(f"/v2/{repo}/manifests/orphan")  # untagged, still linked
    _age(storage)

    run = await _gc(client)
    assert run["counts"]["manifests_removed"] == 1
    assert (await client.get(f"/v2/{repo}/manifests/{orphan_digest}")).status == 404
    assert digest_of(orphan_layer) not in _content_files(storage)
    for digest, _, layer in children:
        await _pull_all(client, repo, digest)
    assert (await client.get(f"/v2/{repo}/manifests/{index_digest}",
                             headers={"Accept": mt.OCI_INDEX})).status == 200
    assert (await client.get(f"/v2/{repo}/manifests/{digest_of(signature)}")).status == 200
    referrers = await (await client.get(f"/v2/{repo}/referrers/{children[0][0]}")).json()
    assert [m["digest"] for m in referrers["manifests"]] == [digest_of(signature)]


async def test_scheduled_runs_reclaim_without_being_asked(aiohttp_client, tmp_path, repo):
    app = create_app(make_config(tmp_path, "filesystem", gc__grace_period=GRACE, gc__interval=0.2))
    client = await aiohttp_client(app)
    digest = await push_blob(client, repo, os.urandom(2500))
    await client.delete(f"/v2/{repo}/blobs/{digest}")
    _age(tmp_path / "storage")
    for _ in range(200):
        runs = (await (await client.get("/api/v1/gc")).json())["items"]
        if digest not in _content_files(tmp_path / "storage") and runs and runs[0]["status"] != "running":
            break
        await asyncio.sleep(0.05)
    assert digest not in _content_files(tmp_path / "storage")
    assert {(r["trigger"], r["actor"], r["actor_kind"]) for r in runs} == {("schedule", "algomint", "system")}
    assert sum(r["counts"]["bytes_reclaimed"] for r in runs) == 2500


async def test_cli_runs_and_dry_runs(fs_client, storage, repo):
    client = fs_client
    digest = await push_blob(client, repo, os.urandom(3000))
    await client.delete(f"/v2/{repo}/blobs/{digest}")
    _age(storage)

    def cli(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["admin", "--url", f"http://127.0.0.1:{client.server.port}", "--json", "gc", *args])
        return code, out.getvalue()

    code, text = await asyncio.to_thread(cli, "--dry-run")
    assert code == 0 and json.loads(text)["counts"]["blobs_removed"] == 1
    assert digest in _content_files(storage)
    code, text = await asyncio.to_thread(cli)
    assert code == 0 and json.loads(text)["counts"]["bytes_reclaimed"] == 3000
    assert digest not in _content_files(storage)


async def test_gc_is_admin_only_and_registry_backend_refuses(auth_env, backend_kind):
    client = auth_env.client
    for user in (ROLE_USERS["algorithm-dev"], ROLE_USERS["business-dev"], ROLE_USERS["consumer"]):
        resp = await client.post("/api/v1/gc", json={"dry_run": True}, headers=basic(user))
        assert resp.status == 403, user
        assert (await client.get("/api/v1/gc", headers=basic(user))).status == 403
    resp = await client.post("/api/v1/gc", json={"dry_run": "perhaps"}, headers=basic(ADMIN))
    assert resp.status == 422
    resp = await client.post("/api/v1/gc", json={"dry_run": True}, headers=basic(ADMIN))
    if backend_kind == "registry":
        assert resp.status == 409
        body = await resp.json()
        assert "garbage-collect" in body["error"]["message"]
    else:
        assert resp.status == 202
        run = await resp.json()
        while run["status"] == "running":
            await asyncio.sleep(0.05)
            run = await (await client.get(f"/api/v1/gc/{run['id']}", headers=basic(ADMIN))).json()
        assert run["status"] == "succeeded" and run["actor"] == ADMIN





async def test_a_stop_mid_sweep_puts_quarantined_content_back(aiohttp_client, tmp_path, repo):
    """Stopped while files sit in quarantine (waiting for the link walk): they go back,
    and the run is recorded as interrupted."""
    import threading

    config = make_config(tmp_path, "filesystem", gc__grace_period=GRACE)
    app = create_app(config)
    client = await aiohttp_client(app)
    storage = tmp_path / "storage"
    digest = await push_blob(client, repo, os.urandom(3333))
    await client.delete(f"/v2/{repo}/blobs/{digest}")
    _age(storage)
    collector = app[GC_RUNS].collector
    walking, release = asyncio.Event(), threading.Event()
    loop = asyncio.get_running_loop()
    linked = collector._linked_sync

    calls = []

    def blocked_walk():
        calls.append(1)
        if len(calls) == 2:  # the first walk finds candidates, the second re-checks them
            loop.call_soon_threadsafe(walking.set)
            release.wait(30)
        return linked()

    collector._linked_sync = blocked_walk
    resp = await client.post("/api/v1/gc", json={"dry_run": False})
    run_id = (await resp.json())["id"]
    await asyncio.wait_for(walking.wait(), 30)
    assert digest not in _content_files(storage)  # quarantined
    await client.close()
    release.set()
    assert digest in _content_files(storage)
    assert list((storage / "_gc").iterdir()) == []
    from proxy.meta import create_database

    db = create_database(config.metadata)
    await db.open()
    try:
        row = await db.fetchone("SELECT status, error FROM gc_runs WHERE id = ?", (run_id,))
    finally:
        await db.close()
    assert (row["status"], row["error"]) == ("failed", "interrupted by a stop")


async def test_a_real_full_build_survives_untagged_collection(aiohttp_client, tmp_path):
    """A frozen full package: its index is tagged, the licensed image manifests it names
    are linked into the business repository by digest only. With ``delete_untagged`` and
    everything aged, the whole package still pulls."""
    from tests.test_fullbuild_e2e import make_package, run_build

    app = create_app(make_config(tmp_path, "filesystem", gc__grace_period=GRACE, gc__delete_untagged=True))
    client = await aiohttp_client(app)
    pkg = await make_package(client, tmp_path)
    build = await run_build(client, pkg.name, "full")
    # Something that should go, to show the run did collect.
    orphan, _ = await push_image(client, "test/orphans", "x", [os.urandom(800)])
    await client.delete("/v2/test/orphans/manifests/x")
    _age(tmp_path / "storage")
    run = await _gc(client)
    assert run["counts"]["manifests_removed"] >= 1
    assert (await client.get(f"/v2/test/orphans/manifests/{orphan}")).status == 404

    index_accept = {"Accept": ", ".join([mt.OCI_INDEX, mt.OCI_MANIFEST])}
    resp = await client.get(f"/v2/{pkg.business}/manifests/1.0-full", headers=index_accept)
    assert resp.status == 200
    index = json.loads(await resp.read())
    children = [m["digest"] for m in index.get("manifests", [])] or [resp.headers["Docker-Content-Digest"]]
    pulled = 0
    for digest in children:
        resp = await client.get(f"/v2/{pkg.business}/manifests/{digest}", headers=index_accept)
        assert resp.status == 200, digest
        document = json.loads(await resp.read())
        for d in [document.get("config"), *document.get("layers", [])]:
            if d is None:
                continue
            blob = await client.get(f"/v2/{pkg.business}/blobs/{d['digest']}")
            assert blob.status == 200, d
            assert digest_of(await blob.read()) == d["digest"]
            pulled += 1
    assert pulled > 0
    for image in build["result"]["images"]:
        await _pull_all(client, pkg.image_repo, image["digest"])
    await _pull_all(client, pkg.image_repo, "v1")


async def test_content_frozen_by_a_full_build_stays_though_no_live_manifest_names_it(aiohttp_client, tmp_path, repo):
    """A full build records what its frozen manifests and the source runtime images
    reference (``frozen_blobs``): a layer made on every pull from a source layer needs
    that layer after the source image's manifest or tag is gone."""
    app = create_app(make_config(tmp_path, "filesystem", gc__grace_period=GRACE, gc__delete_untagged=True))
    client = await aiohttp_client(app)
    storage = tmp_path / "storage"
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"source":1}'
    source_layer, runtime_layer, unfrozen_layer = os.urandom(3000), os.urandom(2000), os.urandom(1000)
    source, _ = await push_image(client, repo, "source", [source_layer], config=config)
    runtime, _ = await push_image(client, repo, "runtime", [runtime_layer])
    unfrozen, unfrozen_manifest = await push_image(client, repo, "unfrozen", [unfrozen_layer])
    # The source image's manifest deleted, the runtime image's tag; the unfrozen image deleted.
    for reference in (source, "runtime", unfrozen):
        assert (await client.delete(f"/v2/{repo}/manifests/{reference}")).status == 202
    frozen = [source, digest_of(config), digest_of(source_layer), runtime, digest_of(runtime_layer)]
    await app[DATABASE].executemany_atomic(
        "INSERT INTO frozen_blobs (repository, digest, tag, build_id, package) VALUES (?,?,?,?,?)",
        [(repo, digest, "1.0-soft", "b1", f"{repo}:1.0") for digest in frozen])
    _age(storage)
    before = _content_files(storage)

    dry = await _gc(client, dry_run=True)
    assert _content_files(storage) == before
    run = await _gc(client)
    for key in ("layer_links_removed", "manifests_removed", "blobs_removed", "bytes_reclaimed"):
        assert dry["counts"][key] == run["counts"][key], key
    # Only the unfrozen image goes: its layer's link and content and its manifest's content.
    assert run["counts"]["layer_links_removed"] == 1 and run["counts"]["manifests_removed"] == 0
    assert set(before) - set(_content_files(storage)) == {unfrozen, digest_of(unfrozen_layer)}
    assert run["counts"]["bytes_reclaimed"] == len(unfrozen_manifest) + len(unfrozen_layer)
    assert (await client.get(f"/v2/{repo}/blobs/{digest_of(unfrozen_layer)}")).status == 404
    # The frozen layers and config are still linked and whole; the untagged frozen manifest stays.
    for blob in (config, source_layer, runtime_layer):
        resp = await client.get(f"/v2/{repo}/blobs/{digest_of(blob)}")
        assert resp.status == 200 and await resp.read() == blob
    await _pull_all(client, repo, runtime)
    assert source in _content_files(storage)  # frozen content is never reclaimed
    # A second run keeps them too.
    again = await _gc(client)
    assert again["counts"]["layer_links_removed"] == 0 and again["counts"]["blobs_removed"] == 0
