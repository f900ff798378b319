"""Listings pay for their page: correct walks while tags change, and a page's cost that
does not depend on how much data there is (counted in rows and backend calls, not time)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from proxy.backend.filesystem import FilesystemBackend
from proxy.backend.remote import RegistryBackend
from proxy.oci import mediatypes as mt
from tests.support.oci import (
    descriptor,
    digest_of,
    image_manifest,
    push_blob,
    push_image,
)


def _next(resp) -> str | None:
    link = resp.headers.get("Link")
    if link is None:
        return None
    assert link.endswith('>; rel="next"') and link.startswith("<")
    return link[1 : link.index(">")]


async def _walk(client, url: str, key: str, between=None) -> list[str]:
    collected: list[str] = []
    while url:
        resp = await client.get(url)
        assert resp.status == 200, await resp.text()
        page = (await resp.json())[key] or []
        collected += page
        url = _next(resp)
        if url is not None:
            query = parse_qs(urlsplit(url).query)
            assert query["last"] == [page[-1]] and query["n"] == [str(len(page))]
        if between is not None:
            await between(page)
    return collected


async def test_tags_walk_while_tags_come_and_go(client, repo, backend_kind):
    _, manifest = await push_image(client, repo, "t000", [b"same"])
    headers = {"Content-Type": mt.OCI_MANIFEST}
    stable = [f"t{i:03d}" for i in range(60)]
    for tag in stable[1:]:
        assert (await client.put(f"/v2/{repo}/manifests/{tag}", data=manifest, headers=headers)).status == 201
    removed: list[str] = []
    added: list[str] = []

    async def change(page: list[str]) -> None:
        # A tag added behind the cursor and one ahead of it, while the walk goes on.
        for tag in (page[0] + "a", "t059z" + str(len(added))):
            assert (await client.put(f"/v2/{repo}/manifests/{tag}", data=manifest, headers=headers)).status == 201
            added.append(tag)
        if backend_kind == "filesystem":  # distribution 2.8 cannot untag
            ahead = stable[stable.index(page[-1]) + 3] if page[-1] in stable[:-3] else None
            if ahead is not None and ahead not in removed:
                assert (await client.delete(f"/v2/{repo}/manifests/{ahead}")).status == 202
                removed.append(ahead)

    walked = await _walk(client, f"/v2/{repo}/tags/list?n=7", "tags", change)
    assert walked == sorted(set(walked)), "ordered, without duplicates"
    # No gaps: every tag that existed for the whole walk was listed once; none deleted
    # before the cursor reached it was.
    assert set(stable) - set(removed) <= set(walked)
    assert not set(removed) & set(walked)
    # Tags added ahead of the cursor show up; the final listing is exact.
    assert "t059z0" in walked
    final = (await (await client.get(f"/v2/{repo}/tags/list")).json())["tags"]
    assert final == sorted((set(stable) - set(removed)) | set(added))


async def test_catalog_walk(client, repo):
    names = [f"{repo}/c{i:02d}" for i in range(12)]
    for name in names:
        await push_image(client, name, "v1", [b"x"])
    walked = await _walk(client, "/v2/_catalog?n=5", "repositories")
    assert walked == sorted(set(walked))
    assert set(names) <= set(walked)
    resp = await client.get("/v2/_catalog", params={"n": "3", "last": names[4]})
    assert (await resp.json())["repositories"] == names[5:8]
    # A repository whose last manifest was deleted stays listed.
    digest = (await client.head(f"/v2/{names[0]}/manifests/v1")).headers["Docker-Content-Digest"]
    await client.delete(f"/v2/{names[0]}/manifests/{digest}")
    resp = await client.get("/v2/_catalog", params={"n": "2", "last": repo + "/"})
    assert (await resp.json())["repositories"] == names[:2]


# -- the embedded store: a page reads a page --------------------------------------------
def _seed(root: Path, repos: int, tags: int) -> None:
    """A store written straight to disk (as an older version left it): no index yet."""
    manifest = image_manifest(b"{}", [])
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    blob = root / "blobs" / "sha256" / digest[7:9] / digest[7:]
    blob.parent.mkdir(parents=True)
    blob.write_bytes(manifest)
    for r in range(repos):
        repo_dir = root / "repositories" / "scale" / f"r{r:05d}" / "_manifests"
        revision = repo_dir / "revisions" / "sha256" / digest[7:]
        revision.parent.mkdir(parents=True)
        revision.write_text(json.dumps({"mediaType": mt.OCI_MANIFEST}))
        tag_dir = repo_dir / "tags"
        tag_dir.mkdir()
        for t in range(tags if r == 0 else 1):
            (tag_dir / f"t{t:05d}").write_text(digest)


class _DiskCalls:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scans = 0
        real = os.scandir

        def scandir(path="."):
            self.scans += 1
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("size", [50, 5000])
async def test_embedded_page_cost_is_flat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    root = tmp_path / "store"
    _seed(root, repos=size, tags=size)
    backend = FilesystemBackend(root)
    await backend.start()  # builds the index from the files, once
    try:
        calls = _DiskCalls(monkeypatch)
        index = backend._index
        index.rows_read = 0
        page, more = await backend.tags_page("scale/r00000", 20, "t00010")
        assert page == [f"t{t:05d}" for t in range(11, 31)] and more
        assert index.rows_read == 21  # the page and one more, whatever the total
        index.rows_read = 0
        page, more = await backend.repositories_page(20, "scale/r00010")
        assert page == [f"scale/r{r:05d}" for r in range(11, 31)] and more
        assert index.rows_read == 21
        # A name range (the plugins listing's "plugins/" prefix) reads only that range.
        index.rows_read = 0
        page, more = await backend.repositories_page(100, None, prefix="scale/r0001")
        assert page == [f"scale/r{r:05d}" for r in range(10, 20)] and not more
        assert index.rows_read == 10
        assert calls.scans == 0  # no directory is listed to answer a page
        # The last page says so.
        page, more = await backend.tags_page("scale/r00000", 20, f"t{size - 5:05d}")
        assert len(page) == 4 and not more
    finally:
        await backend.close()


async def _index_ticks(backend: FilesystemBackend, call) -> int:
    """SQLite VM steps (one tick per 10) the listing index spends on ``call``."""
    ticks = [0]

    def tick() -> int:
        ticks[0] += 1
        return 0

    conn = backend._index._connect()
    conn.set_progress_handler(tick, 10)
    try:
        await call()
    finally:
        conn.set_progress_handler(None, 10)
    return ticks[0]


async def test_embedded_repository_page_seeks_its_start(tmp_path: Path) -> None:
    """A page from the middle seeks to ``last`` (or the prefix), whichever is later,
    instead of reading every name before it: the SQL work is the page's at any size."""
    ticks = {}
    for size in (50, 5000):
        root = tmp_path / f"store{size}"
        _seed(root, repos=size, tags=1)
        backend = FilesystemBackend(root)
        await backend.start()
        try:
            middle = f"scale/r{size // 2:05d}"
            ticks[size] = await _index_ticks(backend, lambda: backend.repositories_page(20, middle))
            page, _ = await backend.repositories_page(20, middle)
            assert page[0] == f"scale/r{size // 2 + 1:05d}" and len(page) == 20
            # The prefix as the later bound, and a prefix that is itself a name.
            assert (await backend.repositories_page(2, "a", prefix="scale/r0000"))[0] == ["scale/r00000", "scale/r00001"]
            assert (await backend.repositories_page(5, None, prefix="scale/r00001"))[0] == ["scale/r00001"]
        finally:
            await backend.close()
    assert ticks[5000] <= 2 * ticks[50] + 5, ticks


async def test_index_rebuilt_and_repaired(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _seed(root, repos=3, tags=5)
    backend = FilesystemBackend(root)
    await backend.start()
    await backend.close()
    # A crash between an index row and its file leaves an extra row: never listed, and
    # removed when met.
    backend._index.add_tag("scale/r00000", "t00002a")
    backend._index.add_repository("scale/gone")
    backend = FilesystemBackend(root)
    await backend.start()
    assert await backend.list_tags("scale/r00000") == [f"t{t:05d}" for t in range(5)]
    assert await backend.list_repositories() == ["scale/r00000", "scale/r00001", "scale/r00002"]
    backend._index.rows_read = 0
    await backend.list_tags("scale/r00000")
    assert backend._index.rows_read == 5
    await backend.close()
    # A store without an index (or a lost one) is indexed again at start.
    for path in (root / "_index").iterdir():
        path.unlink()
    (root / "repositories" / "scale" / "r00001" / "_manifests" / "tags" / "late").write_text("x")
    backend = FilesystemBackend(root)
    await backend.start()
    assert await backend.list_tags("scale/r00001") == ["late", "t00000"]
    page, more = await backend.repositories_page(None, None, prefix="scale/r0000")
    assert page == ["scale/r00000", "scale/r00001", "scale/r00002"] and not more
    await backend.close()


# -- the registry backend: one upstream page per client page of tags ---------------------
class _Upstream:
    """Tag lists and a catalog served like distribution, counting requests. Tags honour
    ``n`` and ``last`` in string order; the catalog, like distribution's, walks names by
    path component (``a/x`` before ``a-b/x``), which string order does not."""

    def __init__(self, tags: list[str], repositories: list[str] = (), cap: int = 1000) -> None:
        self.tags = sorted(tags)
        self.repositories = sorted(repositories, key=lambda name: name.split("/"))
        self.cap = cap
        self.requests = 0
        self.served = 0
        self.during_catalog = None  # an async callable run while a catalog page is answered

    def _page(self, names: list[str], request: web.Request, key: str, path: str) -> web.Response:
        self.requests += 1
        n = min(int(request.query.get("n", "100")), self.cap)
        last = request.query.get("last")
        start = names.index(last) + 1 if last in names else 0
        page = names[start:start + n]
        self.served += len(page)
        headers = {}
        if len(page) == n and page[-1] != names[-1]:
            headers["Link"] = f'<{path}?n={n}&last={page[-1]}>; rel="next"'
        return web.json_response({key: page}, headers=headers)

    async def tags_list(self, request: web.Request) -> web.Response:
        return self._page(self.tags, request, "tags", "/v2/scale/app/tags/list")

    async def catalog(self, request: web.Request) -> web.Response:
        if self.during_catalog is not None:
            await self.during_catalog()
        return self._page(self.repositories, request, "repositories", "/v2/_catalog")


async def _upstream_backend(aiohttp_server, upstream: _Upstream) -> RegistryBackend:
    app = web.Application()
    app.router.add_get("/v2/scale/app/tags/list", upstream.tags_list)
    app.router.add_get("/v2/_catalog", upstream.catalog)
    server = await aiohttp_server(app)
    backend = RegistryBackend(str(server.make_url("/")))
    await backend.start()
    return backend


@pytest.mark.parametrize("size", [50, 5000])
async def test_registry_tags_page_cost_is_flat(aiohttp_server, size: int) -> None:
    upstream = _Upstream([f"t{i:05d}" for i in range(size)])
    backend = await _upstream_backend(aiohttp_server, upstream)
    try:
        page, more = await backend.tags_page("scale/app", 20, "t00010")
        assert page == [f"t{i:05d}" for i in range(11, 31)] and more
        assert (upstream.requests, upstream.served) == (1, 21)
        # An upstream that caps n still fills the page, with a page's worth of requests.
        upstream.cap = 7
        upstream.requests = 0
        page, more = await backend.tags_page("scale/app", 20, "t00010")
        assert page == [f"t{i:05d}" for i in range(11, 31)] and more
        assert upstream.requests == 3
    finally:
        await backend.close()


async def test_registry_catalog_pages_in_string_order_whatever_upstream_walks(aiohttp_server) -> None:
    names = ["a/x", "a/y", "a-b/x", "a.c/z", "b"]
    upstream = _Upstream([], names, cap=2)
    backend = await _upstream_backend(aiohttp_server, upstream)
    try:
        walked, last = [], None
        for _ in range(10):
            page, more = await backend.repositories_page(1, last)
            walked += page
            if not more:
                break
            last = page[-1]
        assert walked == sorted(names)
        page, more = await backend.repositories_page(10, None, prefix="a/")
        assert (page, more) == (["a/x", "a/y"], False)
    finally:
        await backend.close()


async def _repository_catalog(tmp_path: Path, backend: RegistryBackend, clock=None):
    from proxy.service.repositories import SCHEMA, RepositoryCatalog
    from tests.conftest import metadata_database

    db = metadata_database(tmp_path / f"catalog-{os.urandom(4).hex()}.db")
    await db.open()
    await db.migrate("catalog", SCHEMA)
    catalog = RepositoryCatalog(db, backend, **({"clock": clock} if clock else {}))
    await catalog.load()
    return db, catalog


async def _walk_pages(catalog, n: int, prefix: str = "") -> list[str]:
    walked, last = [], None
    for _ in range(1000):
        page, more = await catalog.page(n, last, prefix)
        assert len(page) <= n and (not more or len(page) == n)
        walked += page
        if not more:
            return walked
        last = page[-1]
    raise AssertionError("the walk did not end")


async def test_registry_catalog_index_pages_in_string_order(aiohttp_server, tmp_path: Path) -> None:
    names = ["a/x", "a/y", "a-b/x", "a.c/z", "b", "plugins/p", "plugins/q/r", "pluginsx"]
    upstream = _Upstream([], names, cap=2)
    backend = await _upstream_backend(aiohttp_server, upstream)
    db, catalog = await _repository_catalog(tmp_path, backend)
    try:
        # Before the first walk: upstream's whole catalog, still in string order.
        assert await _walk_pages(catalog, 3) == sorted(names)
        assert upstream.requests > 0
        assert await catalog.reconcile() == len(names)
        upstream.requests = 0
        for n in (1, 2, 3, 100):
            assert await _walk_pages(catalog, n) == sorted(names), n
        assert await _walk_pages(catalog, 1, prefix="plugins/") == ["plugins/p", "plugins/q/r"]
        assert await catalog.page(10, "a-b/x", "a") == (["a.c/z", "a/x", "a/y"], False)
        assert await catalog.page(10, "a/y", "a") == ([], False)
        assert await catalog.page(10, "zzz", "a") == ([], False)
        assert await catalog.page(None, "b", "") == (["plugins/p", "plugins/q/r", "pluginsx"], False)
        assert upstream.requests == 0, "pages come from the index"
        # A walk that has finished survives a restart: no fallback to upstream then.
        from proxy.service.repositories import RepositoryCatalog

        again = RepositoryCatalog(db, backend)
        await again.load()
        assert await again.page(2, None) == (["a-b/x", "a.c/z"], True)
        assert upstream.requests == 0
    finally:
        await db.close()
        await backend.close()


async def test_registry_catalog_reconciles_with_upstream(aiohttp_server, tmp_path: Path) -> None:
    now = [100.0]
    upstream = _Upstream([], ["kept", "gone/soon"], cap=1)
    backend = await _upstream_backend(aiohttp_server, upstream)
    db, catalog = await _repository_catalog(tmp_path, backend, clock=lambda: now[0])
    try:
        await catalog.reconcile()
        # Through algomint: listed at once. Straight to the backend: after the next walk.
        now[0] = 101.0
        await catalog.record("pushed/here")
        upstream.repositories = sorted(["kept", "pushed/here", "direct/push"], key=lambda s: s.split("/"))
        assert (await catalog.page(None, None))[0] == ["gone/soon", "kept", "pushed/here"]
        # A push while the walk is on, of a name the walk has already passed, is not lost.
        pushed_during = []

        async def push_during_walk() -> None:
            if not pushed_during:
                now[0] = 103.0
                await catalog.record("zz/late")
                pushed_during.append(True)

        now[0] = 102.0
        upstream.during_catalog = push_during_walk
        assert await catalog.reconcile() == 3
        assert (await catalog.page(None, None))[0] == ["direct/push", "kept", "pushed/here", "zz/late"]
        # A repository whose manifests are deleted through algomint stays listed.
        await catalog.record("kept")
        assert "kept" in (await catalog.page(None, None))[0]
    finally:
        await db.close()
        await backend.close()


async def test_registry_catalog_without_upstream_catalog_lists_what_passed(aiohttp_server, tmp_path: Path) -> None:
    app = web.Application()  # no /v2/_catalog: 404, like Docker Hub
    server = await aiohttp_server(app)
    backend = RegistryBackend(str(server.make_url("/")))
    await backend.start()
    db, catalog = await _repository_catalog(tmp_path, backend)
    try:
        await catalog.record("mine/one")
        assert await catalog.reconcile() == 0
        assert await catalog.page(10, None) == (["mine/one"], False)
    finally:
        await db.close()
        await backend.close()


@pytest.mark.sqlite_only  # counts SQLite VM steps
@pytest.mark.parametrize("size", [50, 5000])
async def test_registry_catalog_page_cost_is_flat(aiohttp_server, tmp_path: Path, size: int) -> None:
    names = [f"scale/r{i:05d}" for i in range(size)]
    upstream = _Upstream([], names)
    backend = await _upstream_backend(aiohttp_server, upstream)
    db, catalog = await _repository_catalog(tmp_path, backend)
    try:
        await catalog.reconcile()
        upstream.requests = upstream.served = 0
        async with _Steps(db) as counter:
            page, more = await catalog.page(20, "scale/r00010")
        assert page == names[11:31] and more
        assert (upstream.requests, upstream.served) == (0, 0)
        # A seek and the page's rows: SQLite VM steps (one tick per 10) stay a page's worth.
        assert counter.count <= 30, counter.count
        async with _Steps(db) as counter:
            page, more = await catalog.page(100, None, prefix="scale/r0001")
        assert page == names[10:20] and not more
        assert counter.count <= 30, counter.count
    finally:
        await db.close()
        await backend.close()


async def test_catalog_walk_from_the_index_while_repositories_come(config, aiohttp_client, backend_kind) -> None:
    """Through HTTP on both backends, once the registry backend's first walk is done:
    ``Link``/``last`` pages in order, without duplicates or gaps, names pushed during the
    walk ahead of the cursor included."""
    import asyncio
    import uuid

    from proxy.api.state import REGISTRY
    from proxy.app import create_app

    app = create_app(config)
    client = await aiohttp_client(app)
    catalog = app[REGISTRY].repository_catalog
    assert (catalog is None) == (backend_kind == "filesystem")
    base = f"walk{uuid.uuid4().hex[:10]}"
    names = [f"{base}/c{i:02d}" for i in range(9)]
    for name in names:
        await push_image(client, name, "v1", [b"x"])
    if catalog is not None:
        for _ in range(200):
            if catalog._reconciled:
                break
            await asyncio.sleep(0.05)
        assert catalog._reconciled
    added = []

    async def change(page: list[str]) -> None:
        name = f"{base}/c99x{len(added)}"
        await push_image(client, name, "v1", [b"x"])
        added.append(name)

    walked = await _walk(client, f"/v2/_catalog?n=4&last={base}/", "repositories", change)
    mine = [name for name in walked if name.startswith(base + "/")]
    assert walked == sorted(set(walked))
    assert mine[: len(names)] == names
    # Every name pushed ahead of the cursor before the last page is listed (the walk's
    # last change comes after its last page).
    assert set(names) | set(added[:-1]) <= set(mine) <= set(names) | set(added)


# -- referrers: paged by the spec's Link, filtered in the query ----------------------------
async def test_referrers_paginated_with_filter(client, repo):
    subject_digest, subject = await push_image(client, repo, "v1", [b"base"])
    await push_blob(client, repo, b"{}")
    kinds = {}
    for i in range(9):
        kind = "application/vnd.example.sig" if i % 3 == 0 else "application/vnd.example.sbom"
        body = json.dumps({
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": kind,
            "config": descriptor(b"{}", mt.OCI_EMPTY),
            "layers": [descriptor(b"{}", mt.OCI_EMPTY)],
            "subject": descriptor(subject, mt.OCI_MANIFEST),
            "annotations": {"i": str(i)},
        }).encode()
        resp = await client.put(f"/v2/{repo}/manifests/{digest_of(body)}", data=body,
                                headers={"Content-Type": mt.OCI_MANIFEST})
        assert resp.status == 201
        kinds[digest_of(body)] = kind
    base = f"/v2/{repo}/referrers/{subject_digest}"

    async def walk(url: str) -> list[str]:
        seen: list[str] = []
        while url:
            resp = await client.get(url)
            assert resp.status == 200 and resp.headers["Content-Type"] == mt.OCI_INDEX
            seen += [m["digest"] for m in (await resp.json())["manifests"]]
            url = _next(resp)
            if url is not None:
                assert parse_qs(urlsplit(url).query)["last"] == [seen[-1]]
        return seen

    assert await walk(base + "?n=2") == sorted(kinds)
    sigs = sorted(d for d, k in kinds.items() if k == "application/vnd.example.sig")
    filtered = await walk(base + "?n=2&artifactType=application/vnd.example.sig")
    assert filtered == sigs  # the Link keeps the filter
    resp = await client.get(base)  # no n: one page (the default size is far above 9)
    assert len((await resp.json())["manifests"]) == 9 and "Link" not in resp.headers


# -- metadata listings: a page's SQL work does not grow with the table ----------------------
class _Steps:
    """SQLite virtual-machine steps, counted while a query runs: the work, not the time."""

    def __init__(self, db) -> None:
        self.db = db
        self.count = 0

    def _tick(self) -> int:
        self.count += 1
        return 0

    async def __aenter__(self) -> _Steps:
        await self.db.conn.set_progress_handler(self._tick, 10)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.db.conn.set_progress_handler(None, 10)


async def _steps_for(size: int, tmp_path: Path) -> dict[str, int]:
    from types import SimpleNamespace

    from packer.assembly import SCHEMA as ASSEMBLY_SCHEMA
    from packer.assembly import AssemblyService
    from packer.fullbuild.store import SCHEMA as BUILD_SCHEMA
    from packer.fullbuild.store import BuildStore
    from proxy.meta import SqliteDatabase

    db = SqliteDatabase(tmp_path / f"meta-{size}.db")
    await db.open()
    await db.migrate("assembly", ASSEMBLY_SCHEMA)
    await db.migrate("full_builds", BUILD_SCHEMA)
    async with db.transaction() as tx:
        jobs = [(f"generic/other{i}", f"business/other{i}") for i in range(size)]
        jobs[size // 3 : size // 3] = [("generic/mine", "business/x/mine")] * 15
        jobs += [("generic/x", "business/x/mine")] * 15
        await tx.executemany(
            "INSERT INTO assembly_jobs (chain, source_repo, source_tag, source_digest, target_repo, target_tag,"
            " status, trigger, created) VALUES ('c', ?, 'v1', 'sha256:0', ?, 'v1', 'done', 'push', 0)",
            jobs,
        )
        await tx.executemany(
            "INSERT INTO full_builds (id, package, repository, tag, license, source_digest, state, created_at)"
            " VALUES (?, ?, 'business/p', 'v1', 'l', 'sha256:0', ?, ?)",
            [(f"b{i:06d}", "mine" if i % 97 == 0 else f"p{i}", "done" if i % 2 else "failed", float(i))
             for i in range(size)],
        )
    assembly = SimpleNamespace(db=db)
    builds = BuildStore(db)
    steps: dict[str, int] = {}
    checks = {
        "assemblies by repository": lambda: AssemblyService.list(assembly, 10, repository="business/x/mine"),
        "assemblies, next page": lambda: AssemblyService.list(assembly, 10, before=10**6, repository="generic/mine"),
        "full builds": lambda: builds.list(20),
        "full builds by state": lambda: builds.list(20, (float(size), "z"), state="done"),
    }
    for name, call in checks.items():
        async with _Steps(db) as counter:
            rows = await call()
        assert len(rows) == (10 if name.startswith("assemblies") else 20)
        steps[name] = counter.count
    await db.close()
    return steps


async def test_metadata_listing_cost_is_flat(tmp_path: Path) -> None:
    small, large = await _steps_for(50, tmp_path), await _steps_for(5000, tmp_path)
    for name in small:
        assert large[name] <= 2 * small[name] + 20, (name, small[name], large[name])


def test_chain_prefixes_cover_exactly_what_a_chain_can_match() -> None:
    """Assembling "every package of a chain" walks these name ranges, not every repository."""
    from types import SimpleNamespace

    from packer.chains import ChainRegistry, glob_match

    chains = ChainRegistry(None, None, None)  # type: ignore[arg-type]

    def prefixes(*globs: str) -> list[str]:
        return chains.prefixes(SimpleNamespace(spec=SimpleNamespace(match=list(globs))))  # type: ignore[arg-type]

    assert prefixes("generic/face-*", "generic/face-recog/**", "generic/door/?") == ["generic/door/", "generic/face-"]
    assert prefixes("generic/face-*", "**/x") == ["generic/"]  # a leading wildcard: the whole namespace
    assert prefixes("images/**") == []  # outside the sources namespace nothing ever matches
    # Every name a glob matches starts with one of its prefixes.
    for glob, name in [("generic/face-*", "generic/face-recog"), ("generic/*/x?", "generic/a/xy"),
                       ("generic/**", "generic/a/b/c")]:
        assert glob_match(glob, name) and any(name.startswith(p) for p in prefixes(glob))
