"""Console page times with many business packages, run by hand from the repository root
(never in CI): ``PYTHONPATH=$PWD python3 bench/bench_console.py --packages 10000``.

Seeds ``--packages`` business packages of one system (``business/door/alg-NNNNN:1.0``, each
its own repository, each a real business manifest with its descriptor and one file) and a
tenth as many generic ones, written straight into the embedded storage (the listing index
is built from the files at start); then, in SQLite, one succeeded assembly job and one
full build per business package, and the referrers linking each generic
version to its business package. The console is then asked for its main pages (median of
``--repeat`` requests), and each request's server time is taken by a middleware around
every other: from the request's arrival to its response, without the client. Four
readers: an admin, a business developer (``business/**``) and two consumers who may read
only ten of the packages, for whom every listing filters (see ``SCOPED``).
The issue's target: every page under 200 ms."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import create_app
from proxy.oci import mediatypes as mt
from tests.support.auth import ADMIN, auth_config, basic, password_of

# Two consumers who may read ten packages among all: "reader" through a pattern whose literal
# start narrows every listing in SQL, "sparse" through one that only the policy can decide
# (its literal start, business/door/, covers every package): the worst case of filtering.
SCOPED = {"reader": "business/door/alg-0099*", "sparse": "business/door/*0099*"}


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Store:
    """Writes blobs, manifests and tags in the embedded storage's on-disk layout."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def blob(self, data: bytes) -> dict[str, Any]:
        digest = _digest(data)
        path = self.root / "blobs" / "sha256" / digest[7:9] / digest[7:]
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def manifest(self, repo: str, tag: str, doc: dict[str, Any], blobs: list[str]) -> str:
        data = json.dumps(doc, sort_keys=True).encode()
        digest = self.blob(data)["digest"]
        base = self.root / "repositories" / repo
        for linked in blobs:
            link = base / "_layers" / "sha256" / linked[7:]
            link.parent.mkdir(parents=True, exist_ok=True)
            link.touch()
        revision = base / "_manifests" / "revisions" / "sha256" / digest[7:]
        revision.parent.mkdir(parents=True, exist_ok=True)
        revision.write_text(json.dumps({"mediaType": mt.OCI_MANIFEST}))
        (base / "_manifests" / "tags").mkdir(exist_ok=True)
        (base / "_manifests" / "tags" / tag).write_text(digest)
        return digest


def _package(artifact: str, config: dict[str, Any], layer: dict[str, Any], annotations: dict[str, str],
             subject: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": artifact,
        "config": {"mediaType": mt.ALGORITHM_CONFIG, **config},
        "layers": [{"mediaType": "application/octet-stream", **layer,
                    "annotations": {mt.ANNOTATION_TITLE: "model.onnx"}}],
        "annotations": annotations,
    }
    if subject is not None:
        doc["subject"] = subject
    return doc


def seed_store(root: Path, packages: int) -> list[tuple[str, str, str, str]]:
    """The packages; returns (generic repo, generic digest, business repo, business digest)
    for every generic package and the business package made from it."""
    store = _Store(root)
    layer = store.blob(b"\x00" * 4096)
    linked: list[tuple[str, str, str, str]] = []
    for i in range(packages):
        name = f"alg-{i:05d}"
        descriptor = {"name": name, "version": "1.0", "platform": "linux/amd64",
                      "inputs": [{"name": "image", "type": "image/jpeg", "description": "a frame"}],
                      "outputs": [{"name": "boxes", "type": "application/json", "description": "detections"}],
                      "parameters": {"threshold": 0.5}, "models": ["model.onnx"]}
        generic_config = store.blob(json.dumps(descriptor).encode())
        generic_doc = _package(mt.ALGORITHM, generic_config, layer, {})
        generic_digest = _digest(json.dumps(generic_doc, sort_keys=True).encode())
        if i % 10 == 0:
            store.manifest(f"generic/{name}", "1.0", generic_doc, [generic_config["digest"], layer["digest"]])
        business_config = store.blob(json.dumps({**descriptor, "site": "hq"}).encode())
        notes = {"io.algomint.chain": "door", "io.algomint.source.repository": f"generic/{name}",
                 "io.algomint.source.digest": generic_digest, "io.algomint.plugins": "plugins/door-form@sha256:" + "1" * 64}
        subject = {"mediaType": mt.OCI_MANIFEST, "digest": generic_digest, "size": 0}
        business = store.manifest(f"business/door/{name}", "1.0",
                                  _package(mt.BUSINESS, business_config, layer, notes, subject),
                                  [business_config["digest"], layer["digest"]])
        if i % 10 == 0:
            linked.append((f"generic/{name}", generic_digest, f"business/door/{name}", business))
    return linked


def seed_metadata(db: Path, packages: int, linked: list[tuple[str, str, str, str]]) -> None:
    now = time.time() - packages
    conn = sqlite3.connect(db, timeout=60)
    with conn:
        conn.executemany(
            "INSERT INTO assembly_jobs (chain, source_repo, source_tag, source_digest, target_repo, target_tag, status,"
            " trigger, runs, created, started, finished, plugins, result_digest, tag_written)"
            " VALUES ('door', ?, '1.0', ?, ?, '1.0', 'succeeded', 'push', 1, ?, ?, ?, '[]', ?, 1)",
            [(f"generic/alg-{i:05d}", "sha256:" + "2" * 64, f"business/door/alg-{i:05d}", now + i, now + i,
              now + i + 0.05, "sha256:" + "3" * 64) for i in range(packages)])
        builds = [(uuid.uuid4().hex, i) for i in range(packages)]
        conn.executemany(
            "INSERT INTO full_builds (id, package, repository, tag, license, source_digest, state, created_at,"
            " started_at, finished_at, attempts, bytes_total, bytes_done)"
            " VALUES (?, ?, ?, '1.0', 'full', ?, 'succeeded', ?, ?, ?, 1, 4096, 4096)",
            [(b, f"business/door/alg-{i:05d}:1.0", f"business/door/alg-{i:05d}", "sha256:" + "3" * 64,
              now + i, now + i, now + i + 1) for b, i in builds])
        conn.executemany("INSERT INTO full_build_requesters (build_id, name, kind) VALUES (?, 'admin', 'user')",
                         [(b,) for b, _ in builds])
        conn.executemany(
            "INSERT INTO referrers (repo, subject, digest, media_type, size, artifact_type, annotations)"
            " VALUES (?, ?, ?, ?, 600, ?, ?)",
            [(generic, subject, business, mt.OCI_MANIFEST, mt.BUSINESS, json.dumps({"io.algomint.chain": "door"}))
             for generic, subject, _, business in linked])
    conn.close()


def server_times(app: web.Application, times: list[tuple[float, float]]) -> None:
    """Record every request's wall time inside the server (outermost middleware first) and
    the process's CPU time meanwhile (SQLite's thread included): on a loaded machine the
    CPU time is the steadier figure, one request runs at a time."""

    @web.middleware
    async def timing(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return await handler(request)
        finally:
            times.append(((time.perf_counter() - started) * 1000, (time.process_time() - cpu) * 1000))

    app.middlewares.insert(0, timing)


async def _sign_in(client: TestClient, user: str) -> None:
    client.session.cookie_jar.clear()
    form = await (await client.get("/ui/login")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    resp = await client.post("/ui/login", data={"csrf": csrf, "username": user, "password": password_of(user)})
    assert resp.status == 200 and "Signed in as" in await resp.text(), resp.status


PAGES = [
    "/ui/algorithms", "/ui/packages", "/ui/systems", "/ui/systems/door", "/ui/repositories/business/door/alg-00990",
    "/ui/repositories/business/door/alg-00990?tag=1.0", "/ui/repositories/generic/alg-00990?tag=1.0",
    "/ui/assemblies", "/ui/assemblies?chain=door&status=succeeded", "/ui/builds", "/ui/plugins",
    "/ui/account", "/ui/admin/audit",
]


async def main(packages: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        linked = seed_store(work / "storage", packages)
        config = auth_config(work, "filesystem")
        runner = web.AppRunner(create_app(config))  # a first start creates the schema
        await runner.setup()
        await runner.cleanup()
        seed_metadata(work / "metadata.db", packages, linked)
        print(f"seeded {packages} business and {len(linked)} generic packages, {packages} assembly jobs and "
              f"{packages} full builds in {time.perf_counter() - started:.1f} s", flush=True)
        app = create_app(config)
        times: list[tuple[float, float]] = []
        server_times(app, times)
        async with TestClient(TestServer(app)) as client:
            for name, roles in (("biz", ["business-dev"]), ("reader", []), ("sparse", [])):
                resp = await client.post("/api/v1/users", json={"name": name, "kind": "user", "roles": roles,
                                                                "password": password_of(name)}, headers=basic(ADMIN))
                assert resp.status == 201, await resp.text()
            for name, pattern in SCOPED.items():
                resp = await client.post("/api/v1/grants", json={"subject": name, "role": "consumer",
                                                                 "pattern": pattern}, headers=basic(ADMIN))
                assert resp.status == 201, await resp.text()
            plugin = {"name": "door-form", "version": "1.0", "kind": "file",
                      "files": [{"path": "form.json", "data": base64.b64encode(b"{}").decode()}]}
            resp = await client.post("/api/v1/plugins", json=plugin, headers=basic(ADMIN))
            assert resp.status == 201, await resp.text()
            chain = {"name": "door", "match": ["generic/none-*"], "plugins": ["plugins/door-form:1.0"]}
            resp = await client.post("/api/v1/chains", json=chain, headers=basic(ADMIN))  # assembles nothing
            assert resp.status == 201, await resp.text()
            users = (ADMIN, "biz", *SCOPED)
            print(f"{'page':52} " + " ".join(f"{u:>15}" for u in users) + "   (median server ms: wall / CPU; status)")
            rows: dict[str, list[str]] = {page: [] for page in PAGES}
            for user in users:
                await _sign_in(client, user)
                for page in PAGES:
                    samples = []
                    for _ in range(repeat + 1):  # the first request warms caches and is not counted
                        resp = await client.get(page)
                        await resp.read()
                        samples.append(times[-1])
                    wall = statistics.median(s[0] for s in samples[1:])
                    cpu = statistics.median(s[1] for s in samples[1:])
                    rows[page].append(f"{wall:5.1f} /{cpu:5.1f} {resp.status}")
            for page, cells in rows.items():
                print(f"{page:52} " + " ".join(f"{c:>15}" for c in cells))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.packages, args.repeat))
