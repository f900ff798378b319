"""Three ``algomint serve`` replicas behind a load balancer on one metadata store and one
docker-registry: real clients through the balancer, and failover — a replica SIGKILLed
in the middle of an assembly, a full build and a webhook delivery loses nothing.

Leases are short here (4 s, heartbeat 0.5 s), so a dead replica's job moves within
seconds; production defaults are in docs/deploy.md."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from aiohttp import web

from proxy.cli import main as cli_main
from proxy.oci import mediatypes as mt
from tests.support.cluster import ADMIN_PASSWORD, BALANCER, Cluster, run_cluster
from tests.support.distribution import Distribution
from tests.support.images import write_oci_layout
from tests.support.oci import digest_of
from tests.support.packer import DESCRIPTOR, wait_for
from tests.support.tarlayers import MODELS, build_image

pytestmark = pytest.mark.skipif(BALANCER is None, reason="needs haproxy or nginx")

ADMIN = {"Authorization": aiohttp.encode_basic_auth("admin", ADMIN_PASSWORD)}
SLOW = f"algomint-replica-slow-{uuid.uuid4().hex[:8]}"
SLOW_JOB = (f"# {SLOW}\nimport time, pathlib\ntime.sleep(4)\n"
            "pathlib.Path('files/slow.txt').write_text('finished')\n")


@contextlib.contextmanager
def _shared_store(root: Path) -> Iterator[str]:
    """A PostgreSQL database in a throwaway cluster (the production topology); a SQLite
    file every replica opens (WAL) only where PostgreSQL cannot be started."""
    try:
        from tests.support.postgres import pg_binary, run_postgres
    except ImportError:
        pg_binary = None  # type: ignore[assignment]
    if pg_binary is None or pg_binary("initdb") is None:
        yield str(root / "metadata.db")
        return
    with run_postgres() as server:
        yield server.create_database()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, distribution: Distribution) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    prefix = root / "keys" / "soft"
    assert cli_main(["keygen", "--out", str(prefix)]) == 0
    extra = (f'[licenses.soft]\nscheme = "x25519"\npublic_key = "{prefix.with_suffix(".pub")}"\n'
             'chunk_size = 4096\n[full_builds]\npoll_interval = 0.3\n')
    with _shared_store(root) as store, run_cluster(root, distribution, store, extra=extra) as running:
        yield running


@pytest.fixture
async def lb(cluster: Cluster) -> aiohttp.ClientSession:
    async with aiohttp.ClientSession(cluster.url, headers=ADMIN) as session:
        yield session


def _direct(cluster: Cluster, i: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cluster.replicas[i].url, headers=ADMIN)


async def _ok(resp: aiohttp.ClientResponse, *statuses: int) -> Any:
    text = await resp.text()
    assert resp.status in (statuses or (200,)), f"{resp.status}: {text}"
    return json.loads(text) if text and resp.content_type.endswith("json") else text


async def _run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                env={**os.environ, **(env or {})})
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def _lease_owner(cluster: Cluster, kind: str, job_id: str) -> str | None:
    rows = await asyncio.to_thread(cluster.query, "SELECT owner FROM leases WHERE kind = ? AND id = ?", (kind, job_id))
    return rows[0][0] if rows else None


async def _kill_owner(cluster: Cluster, kind: str, job_id: str) -> int:
    owner = await wait_for(lambda: _lease_owner(cluster, kind, job_id), timeout=20)
    victim = cluster.index_of(owner)
    cluster.kill(victim)
    return victim


class Receiver:
    """A webhook receiver; ``hang_first`` holds the first request until released."""

    def __init__(self, hang_first: bool = False) -> None:
        self.received: list[dict] = []
        self.hang = asyncio.Event() if hang_first else None
        self.first_arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.received.append(body)
        self.first_arrived.set()
        if self.hang is not None and len(self.received) == 1:
            await self.hang.wait()  # the sender dies meanwhile
        return web.Response()

    def ids(self, kind: str) -> list[str]:
        return [e["id"] for e in self.received if e["type"] == kind]


async def _receiver(aiohttp_server, **kwargs: Any) -> tuple[Receiver, str]:
    receiver = Receiver(**kwargs)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    return receiver, str(server.make_url("/hook"))


async def _subscribe(lb: aiohttp.ClientSession, url: str, events: list[str], repositories: list[str]) -> dict:
    return await _ok(await lb.post("/api/v1/subscriptions", json={
        "url": url, "events": events, "repositories": repositories, "secret": "s" * 32}), 201)


async def _plugin(lb: aiohttp.ClientSession, name: str, kind: str, options: dict | None = None,
                  files: dict[str, bytes] | None = None) -> None:
    await _ok(await lb.post("/api/v1/plugins", json={
        "name": name, "version": "1.0", "kind": kind, "options": options or {},
        "files": [{"path": p, "data": base64.b64encode(d).decode()} for p, d in (files or {}).items()]}), 201)


async def _chain(lb: aiohttp.ClientSession, name: str, match: str, plugin: str) -> None:
    await _ok(await lb.post("/api/v1/chains", json={"name": name, "match": [match], "plugins": [f"plugins/{plugin}:1.0"],
                                                    "params": {}}), 201)


def _oras(host: str) -> Any:
    import oras.provider

    registry = oras.provider.Registry(host, insecure=True)
    config = Path(os.environ.get("TMPDIR", "/tmp")) / f"oras-{uuid.uuid4().hex}.json"
    assert "Succeeded" in str(registry.login("admin", ADMIN_PASSWORD, hostname=host, config_path=str(config)))
    return registry


def _oras_push(host: str, repo: str, tag: str, descriptor: dict, files: dict[str, bytes], workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "descriptor.json"
    config.write_text(json.dumps(descriptor))
    paths, titles = [], {}
    for name, data in files.items():
        path = workdir / name
        path.write_bytes(data)
        paths.append(str(path))
        titles[str(path)] = {mt.ANNOTATION_TITLE: name}
    (workdir / "annotations.json").write_text(json.dumps(titles))
    resp = _oras(host).push(target=f"{host}/{repo}:{tag}", files=paths,
                            manifest_config=f"{config}:{mt.ALGORITHM_CONFIG}",
                            annotation_file=str(workdir / "annotations.json"), disable_path_validation=True, quiet=True)
    return resp.headers["Docker-Content-Digest"]


async def _tags(session: aiohttp.ClientSession, repo: str) -> list[str]:
    return (await _ok(await session.get(f"/v2/{repo}/tags/list")))["tags"]


# -- one service through the balancer ----------------------------------------------------
async def test_requests_spread_over_every_replica(cluster: Cluster, lb: aiohttp.ClientSession):
    seen = set()
    for _ in range(12):
        text = await _ok(await lb.get("/metrics"))
        seen |= {line.split('replica="')[1].split('"')[0] for line in text.splitlines()
                 if line.startswith("algomint_replica_info{")}
    assert seen == set(cluster.ids)
    logged = cluster.replicas[1].logs()
    assert '"replica": "r1"' in logged and '"replica": "r0"' not in logged


async def test_skopeo_and_oras_push_and_pull_through_the_balancer(cluster: Cluster, tmp_path: Path):
    uid = uuid.uuid4().hex[:8]
    src = tmp_path / "layout"
    write_oci_layout(src, "v1", [{"bin/tool": os.urandom(300_000)}, {"etc/conf": b"x" * 1000}])
    creds = f"admin:{ADMIN_PASSWORD}"
    code, out = await _run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", creds,
                           f"oci:{src}:v1", f"docker://{cluster.host}/images/tool-{uid}:v1")
    assert code == 0, out
    code, out = await _run("skopeo", "copy", "--src-tls-verify=false", "--src-creds", creds,
                           f"docker://{cluster.host}/images/tool-{uid}:v1", f"oci:{tmp_path / 'back'}:v1")
    assert code == 0, out
    code, out = await _run("skopeo", "inspect", "--tls-verify=false", "--creds", creds, "--raw",
                           f"docker://{cluster.host}/images/tool-{uid}:v1")
    assert code == 0 and json.loads(out)["layers"], out

    files = {"model.onnx": os.urandom(200_000), "README.md": b"readme\n"}
    digest = await asyncio.to_thread(_oras_push, cluster.host, f"generic/face-{uid}", "1.0", DESCRIPTOR, files,
                                     tmp_path / "push")
    pulled = await asyncio.to_thread(lambda: _oras(cluster.host).pull(target=f"{cluster.host}/generic/face-{uid}:1.0",
                                                                      outdir=str(tmp_path / "pulled")))
    assert sorted(Path(p).name for p in pulled) == ["README.md", "model.onnx"]
    assert (tmp_path / "pulled" / "model.onnx").read_bytes() == files["model.onnx"]
    for i in range(3):  # every replica serves what went through any of them
        async with _direct(cluster, i) as http:
            resp = await http.get(f"/v2/generic/face-{uid}/manifests/1.0", headers={"Accept": mt.OCI_MANIFEST})
            assert resp.status == 200 and resp.headers["Docker-Content-Digest"] == digest


async def test_one_upload_session_over_three_replicas(cluster: Cluster):
    """POST on one replica, PATCH on the next, PUT on the third: registry upload ids are stateless."""
    repo, data = f"images/split-{uuid.uuid4().hex[:8]}", os.urandom(100_000)
    async with _direct(cluster, 0) as a, _direct(cluster, 1) as b, _direct(cluster, 2) as c:
        resp = await a.post(f"/v2/{repo}/blobs/uploads/")
        assert resp.status == 202, await resp.text()
        location = resp.headers["Location"].split(cluster.host, 1)[-1]
        resp = await b.patch(location, data=data[:60_000], headers={"Content-Type": "application/octet-stream"})
        assert resp.status == 202, await resp.text()
        location = resp.headers["Location"].split(cluster.host, 1)[-1]
        sep = "&" if "?" in location else "?"
        resp = await c.put(f"{location}{sep}digest={digest_of(data)}", data=data[60_000:],
                           headers={"Content-Type": "application/octet-stream"})
        assert resp.status == 201, await resp.text()
        resp = await a.get(f"/v2/{repo}/blobs/{digest_of(data)}")
        assert resp.status == 200 and await resp.read() == data


async def test_pushes_spread_over_replicas_give_one_tag_list_and_referrers_list(cluster: Cluster):
    repo = f"generic/spread-{uuid.uuid4().hex[:8]}"
    config = b'{"name": "spread", "version": "1.0"}'
    sessions = [_direct(cluster, i) for i in range(3)]
    try:
        for http in sessions:
            resp = await http.post(f"/v2/{repo}/blobs/uploads/?digest={digest_of(config)}", data=config)
            assert resp.status == 201, await resp.text()
        subject_doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": "application/x-subject",
                       "config": {"mediaType": "application/json", "digest": digest_of(config), "size": len(config)},
                       "layers": []}
        subject = json.dumps(subject_doc).encode()

        async def put(http: aiohttp.ClientSession, ref: str, body: bytes) -> str:
            resp = await http.put(f"/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": mt.OCI_MANIFEST})
            assert resp.status == 201, await resp.text()
            return resp.headers["Docker-Content-Digest"]

        subject_digest = await put(sessions[0], "base", subject)
        tags = [f"v{i}" for i in range(9)]
        await asyncio.gather(*(put(sessions[i % 3], tag, subject) for i, tag in enumerate(tags)))
        referrers = []
        for i in range(6):  # artifacts naming the subject, each through another replica
            doc = {**subject_doc, "artifactType": f"application/x-sig{i}",
                   "subject": {"mediaType": mt.OCI_MANIFEST, "digest": subject_digest, "size": len(subject)}}
            referrers.append(await put(sessions[i % 3], digest_of(json.dumps(doc).encode()), json.dumps(doc).encode()))
        views = []
        for http in sessions:
            listed = await _ok(await http.get(f"/v2/{repo}/referrers/{subject_digest}"))
            views.append((sorted(await _tags(http, repo)), sorted(m["digest"] for m in listed["manifests"])))
        assert views[0] == views[1] == views[2]
        assert views[0][0] == sorted(["base", *tags])
        assert views[0][1] == sorted(referrers)
    finally:
        for http in sessions:
            await http.close()


async def test_a_manifest_deleted_on_one_replica_is_gone_from_the_others_within_a_second(cluster: Cluster):
    repo, config = f"generic/gone-{uuid.uuid4().hex[:8]}", b'{"name": "gone"}'
    doc = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": "application/x-gone",
                      "config": {"mediaType": "application/json", "digest": digest_of(config), "size": len(config)},
                      "layers": []}).encode()
    async with _direct(cluster, 0) as a, _direct(cluster, 1) as b:
        assert (await a.post(f"/v2/{repo}/blobs/uploads/?digest={digest_of(config)}", data=config)).status == 201
        resp = await a.put(f"/v2/{repo}/manifests/v1", data=doc, headers={"Content-Type": mt.OCI_MANIFEST})
        digest = resp.headers["Docker-Content-Digest"]
        url = f"/v2/{repo}/manifests/{digest}"
        assert (await b.get(url, headers={"Accept": mt.OCI_MANIFEST})).status == 200  # in replica 1's cache now
        assert (await a.delete(url)).status == 202
        deleted = time.monotonic()
        while (await b.get(url, headers={"Accept": mt.OCI_MANIFEST})).status == 200:
            assert time.monotonic() - deleted < 1.0, "replica 1 still serves the deleted manifest"
            await asyncio.sleep(0.02)


async def test_a_revoked_token_is_refused_by_another_replica_within_a_second(cluster: Cluster):
    name = f"ci-{uuid.uuid4().hex[:6]}"
    async with _direct(cluster, 0) as a, _direct(cluster, 1) as b:
        await _ok(await a.post("/api/v1/users", json={"name": name, "kind": "robot", "roles": ["consumer"]}), 201)
        created = await _ok(await a.post("/api/v1/tokens", json={"owner": name, "name": "ci"}), 201)
        bearer = {"Authorization": f"Bearer {created['token']}"}
        async with aiohttp.ClientSession(cluster.replicas[1].url) as plain:
            assert (await plain.get("/api/v1/whoami", headers=bearer)).status == 200  # cached on replica 1 now
            await _ok(await a.delete(f"/api/v1/tokens/{created['id']}"), 200, 204)
            revoked = time.monotonic()
            while (await plain.get("/api/v1/whoami", headers=bearer)).status == 200:
                assert time.monotonic() - revoked < 1.0, "replica 1 still accepts the revoked token"
                await asyncio.sleep(0.02)
            # Disabling the account reaches the other replica as fast (cache_ttl is 30 s here).
            second = await _ok(await a.post("/api/v1/tokens", json={"owner": name, "name": "ci2"}), 201)
            bearer = {"Authorization": f"Bearer {second['token']}"}
            await wait_for(lambda: _status_is(plain, bearer, 200), timeout=5)
            await _ok(await a.patch(f"/api/v1/users/{name}", json={"disabled": True}))
            disabled = time.monotonic()
            while (await plain.get("/api/v1/whoami", headers=bearer)).status == 200:
                assert time.monotonic() - disabled < 1.0, "replica 1 still accepts a disabled account"
                await asyncio.sleep(0.02)
        del b


async def _status_is(session: aiohttp.ClientSession, headers: dict, status: int) -> bool:
    return (await session.get("/api/v1/whoami", headers=headers)).status == status


async def test_a_chain_created_on_one_replica_runs_on_every_replica(cluster: Cluster, lb: aiohttp.ClientSession):
    uid = uuid.uuid4().hex[:8]
    await _plugin(lb, f"stamp-{uid}", "file", files={"stamp.txt": b"stamped\n"})
    async with _direct(cluster, 2) as c:
        await _chain(c, f"door{uid}", f"generic/chain-{uid}-*", f"stamp-{uid}")
    for i in range(3):  # every replica knows the chain now, from its own memory
        async with _direct(cluster, i) as http:
            await wait_for(lambda: _has_chain(http, f"door{uid}"), timeout=2)


async def _has_chain(http: aiohttp.ClientSession, name: str) -> bool:
    return (await http.get(f"/api/v1/chains/{name}")).status == 200


# -- failover ------------------------------------------------------------------------
async def _job(lb: aiohttp.ClientSession, repo: str) -> dict | None:
    items = (await _ok(await lb.get("/api/v1/assemblies", params={"repository": repo})))["items"]
    return items[0] if items else None


async def test_assembly_finishes_on_another_replica_when_its_replica_is_killed(
        cluster: Cluster, lb: aiohttp.ClientSession, aiohttp_server, tmp_path: Path):
    uid = uuid.uuid4().hex[:8]
    receiver, url = await _receiver(aiohttp_server)
    business = f"business/slow{uid}/face-{uid}"
    await _subscribe(lb, url, ["generic.pushed", "business.assembled", "assembly.failed"], [f"**/face-{uid}"])
    await _plugin(lb, f"slow-{uid}", "job", {"command": [sys.executable, "-c", SLOW_JOB]})
    await _chain(lb, f"slow{uid}", f"generic/face-{uid}", f"slow-{uid}")
    await wait_for(lambda: _chain_everywhere(cluster, f"slow{uid}"), timeout=3)
    source = await asyncio.to_thread(_oras_push, cluster.host, f"generic/face-{uid}", "1.0", DESCRIPTOR,
                                     {"model.onnx": b"m" * 100}, tmp_path / "push")
    job = await wait_for(lambda: _job(lb, f"generic/face-{uid}"), timeout=10)
    await wait_for(lambda: _is(lb, job["id"], "running"), timeout=15)
    victim = await _kill_owner(cluster, "assembly", str(job["id"]))
    try:
        done = await wait_for(lambda: _finished(lb, job["id"]), timeout=40, interval=0.2)
        assert done["status"] == "succeeded", done
        assert done["runs"] == 2  # run again from the start, by another replica
        assert f"replica {cluster.ids[victim]} stopped renewing its lease" in done["logs"]
        assert await _tags(lb, business) == ["1.0"]  # one business tag
        resp = await lb.get(f"/v2/{business}/manifests/1.0", headers={"Accept": mt.OCI_MANIFEST})
        doc = json.loads(await resp.read())
        assert doc["subject"]["digest"] == source
        await wait_for(lambda: asyncio.sleep(0, result=receiver.ids("business.assembled")), timeout=15)
        await asyncio.sleep(1)  # a duplicate would arrive by now
        assert len(set(receiver.ids("generic.pushed"))) == 1
        assert len(set(receiver.ids("business.assembled"))) == 1  # emitted once, by the lease holder
        assert not receiver.ids("assembly.failed")
    finally:
        cluster.restart(victim)


async def test_a_restarting_replica_leaves_a_live_replicas_job_alone(
        cluster: Cluster, lb: aiohttp.ClientSession, tmp_path: Path):
    uid = uuid.uuid4().hex[:8]
    await _plugin(lb, f"slower-{uid}", "job", {"command": [sys.executable, "-c", SLOW_JOB.replace("sleep(4)", "sleep(8)")]})
    await _chain(lb, f"live{uid}", f"generic/live-{uid}", f"slower-{uid}")
    await wait_for(lambda: _chain_everywhere(cluster, f"live{uid}"), timeout=3)
    await asyncio.to_thread(_oras_push, cluster.host, f"generic/live-{uid}", "1.0", DESCRIPTOR, {"a": b"a"},
                            tmp_path / "push")
    job = await wait_for(lambda: _job(lb, f"generic/live-{uid}"), timeout=10)
    await wait_for(lambda: _is(lb, job["id"], "running"), timeout=15)
    owner = await _lease_owner(cluster, "assembly", str(job["id"]))
    other = (cluster.index_of(owner) + 1) % 3
    cluster.replicas[other].process.terminate()  # a rolling restart of another replica
    cluster.replicas[other].process.wait(15)
    await asyncio.to_thread(cluster.restart, other)
    await asyncio.sleep(1)  # the restarted replica's workers have polled the queue
    assert await _lease_owner(cluster, "assembly", str(job["id"])) == owner
    assert await _is(lb, job["id"], "running")
    done = await wait_for(lambda: _finished(lb, job["id"]), timeout=30, interval=0.2)
    assert done["status"] == "succeeded" and done["runs"] == 1  # never taken from its live replica


async def _chain_everywhere(cluster: Cluster, name: str) -> bool:
    for i in range(3):
        async with _direct(cluster, i) as http:
            if not await _has_chain(http, name):
                return False
    return True


async def _is(lb: aiohttp.ClientSession, job_id: int, status: str) -> bool:
    return (await _ok(await lb.get(f"/api/v1/assemblies/{job_id}")))["status"] == status


async def _finished(lb: aiohttp.ClientSession, job_id: int) -> dict | None:
    job = await _ok(await lb.get(f"/api/v1/assemblies/{job_id}"))
    return job if job["status"] in ("succeeded", "failed") else None


async def _push_image(lb: aiohttp.ClientSession, repo: str, image: Any) -> None:
    for blob in [image.config, *(layer.blob for layer in image.layers)]:
        resp = await lb.post(f"/v2/{repo}/blobs/uploads/?digest={digest_of(blob)}", data=blob)
        assert resp.status == 201, await resp.text()
    resp = await lb.put(f"/v2/{repo}/manifests/v1", data=image.manifest, headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201, await resp.text()


async def test_full_build_finishes_on_another_replica_when_its_replica_is_killed(
        cluster: Cluster, lb: aiohttp.ClientSession, aiohttp_server, tmp_path: Path):
    uid = uuid.uuid4().hex[:8]
    receiver, url = await _receiver(aiohttp_server)
    image_repo, generic, business = f"images/face{uid}", f"generic/face{uid}", f"business/fb{uid}/face{uid}"
    await _subscribe(lb, url, ["full.built"], [business])
    # Models big enough that encrypting them takes a while: the kill lands mid-build.
    await _push_image(lb, image_repo, build_image(tmp_path / "img", model_size=24_000_000))
    await _plugin(lb, f"form-{uid}", "file", files={"form.json": b'{"door": true}'})
    await _chain(lb, f"fb{uid}", generic, f"form-{uid}")
    await wait_for(lambda: _chain_everywhere(cluster, f"fb{uid}"), timeout=3)
    descriptor = {**DESCRIPTOR, "name": "face", "runtime": {"images": [{"ref": f"{image_repo}:v1", "models": [MODELS]}]}}
    await asyncio.to_thread(_oras_push, cluster.host, generic, "1.0", descriptor, {"README.md": b"r\n"}, tmp_path / "p")
    await wait_for(lambda: _has_tag(lb, business, "1.0"), timeout=20)

    build = await _ok(await lb.post("/api/v1/full-builds", json={"package": f"{business}:1.0", "license": "soft"}),
                      200, 202)
    await wait_for(lambda: _build_state(lb, build["id"], "running"), timeout=15, interval=0.05)
    victim = await _kill_owner(cluster, "full_build", build["id"])
    try:
        done = await wait_for(lambda: _build_done(lb, build["id"]), timeout=60, interval=0.2)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 2  # taken over after the kill, not finished before it
        tags = await _tags(lb, business)
        assert "1.0-soft" in tags and all(t == "1.0" or t.startswith("1.0-soft") for t in tags), tags
        # The tag holds the result the lease holder recorded: no second run moved it since.
        resp = await lb.head(f"/v2/{business}/manifests/1.0-soft", headers={"Accept": mt.OCI_INDEX})
        assert resp.headers["Docker-Content-Digest"] == done["result"]["digest"]
        assert sorted(await _tags(lb, image_repo)) == ["v1", "v1-soft"]
        await wait_for(lambda: asyncio.sleep(0, result=receiver.ids("full.built")), timeout=15)
        await asyncio.sleep(1)
        assert len(set(receiver.ids("full.built"))) == 1
    finally:
        cluster.restart(victim)


async def _has_tag(lb: aiohttp.ClientSession, repo: str, tag: str) -> bool:
    resp = await lb.get(f"/v2/{repo}/tags/list")
    return resp.status == 200 and tag in (await resp.json())["tags"]


async def _build_state(lb: aiohttp.ClientSession, build_id: str, state: str) -> bool:
    return (await _ok(await lb.get(f"/api/v1/full-builds/{build_id}")))["state"] == state


async def _build_done(lb: aiohttp.ClientSession, build_id: str) -> dict | None:
    build = await _ok(await lb.get(f"/api/v1/full-builds/{build_id}"))
    return build if build["state"] in ("succeeded", "failed") else None


async def test_webhook_delivery_is_resent_by_another_replica_when_its_sender_is_killed(
        cluster: Cluster, lb: aiohttp.ClientSession, aiohttp_server, tmp_path: Path):
    uid = uuid.uuid4().hex[:8]
    receiver, url = await _receiver(aiohttp_server, hang_first=True)
    sub = await _subscribe(lb, url, ["generic.pushed"], [f"generic/hook-{uid}"])
    await asyncio.to_thread(_oras_push, cluster.host, f"generic/hook-{uid}", "1.0", DESCRIPTOR, {"a.txt": b"a"},
                            tmp_path / "push")
    await asyncio.wait_for(receiver.first_arrived.wait(), 20)  # the sender now waits for our answer
    [(delivery_id,)] = await asyncio.to_thread(
        cluster.query, "SELECT id FROM webhook_deliveries WHERE subscription_id = ?", (sub["id"],))
    victim = await _kill_owner(cluster, "webhook", str(delivery_id))
    try:
        await wait_for(lambda: asyncio.sleep(0, result=len(receiver.received) >= 2), timeout=20, interval=0.1)
        receiver.hang.set()
        first, second = receiver.received[:2]
        assert first["id"] == second["id"]  # the same event, sent again: nothing lost
        deliveries = (await _ok(await lb.get(f"/api/v1/subscriptions/{sub['id']}/deliveries")))["items"]
        await wait_for(lambda: _delivered(lb, sub["id"]), timeout=10)
        assert len(deliveries) == 1
    finally:
        receiver.hang.set()
        cluster.restart(victim)


async def _delivered(lb: aiohttp.ClientSession, sub_id: str) -> bool:
    items = (await _ok(await lb.get(f"/api/v1/subscriptions/{sub_id}/deliveries")))["items"]
    return bool(items) and all(d["status"] == "delivered" for d in items)


async def test_the_audit_chain_written_by_every_replica_verifies(cluster: Cluster, lb: aiohttp.ClientSession):
    for _ in range(9):  # mutations spread over the replicas, each acknowledged once durable
        await _ok(await lb.post("/api/v1/users", json={"name": f"u-{uuid.uuid4().hex[:8]}", "kind": "robot",
                                                       "roles": []}), 201)
    writers = await asyncio.to_thread(cluster.query, "SELECT COUNT(*) FROM audit_log")
    assert writers[0][0] > 9
    config = cluster.root / "r0" / "algomint.toml"
    store = {"ALGOMINT_METADATA__URL": cluster.store} if cluster.store.startswith("postgresql://") else {}
    code, out = await _run(sys.executable, "-m", "proxy.cli", "audit", "verify", "--config", str(config), "--json",
                           env=store)
    assert code == 0, out
    assert json.loads(out)["ok"] is True


def test_a_second_process_on_one_embedded_storage_is_refused(tmp_path: Path):
    from tests.support.distribution import free_port
    from tests.support.server import start_server

    config = f'[storage]\npath = "{tmp_path / "storage"}"\n[metadata]\npath = "{tmp_path / "a.db"}"\n'
    first = start_server(tmp_path / "a", config)
    try:
        other = f'[storage]\npath = "{tmp_path / "storage"}"\n[metadata]\npath = "{tmp_path / "b.db"}"\n'
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "algomint.toml").write_text(other)
        result = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(tmp_path / "b" / "algomint.toml"),
                                 "--listen", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1
        assert "embedded (filesystem) backend serves one process only" in result.stderr
        assert 'storage.backend = "registry"' in result.stderr
    finally:
        first.process.terminate()
        first.process.wait(10)
