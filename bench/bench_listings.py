"""Listing growth curves, run by hand from the repository root (never in CI).

For each size (items in the listing) it builds a fresh embedded store and metadata
database, starts algomint in-process on a loopback port and times one page of each
listing with ``n``/``limit`` = 100, from the middle of the data (``last`` = the item at
the middle, or earlier so that a whole page follows), printing the p50 and p90 over
``--repeat`` requests:

- ``tags/list?n=100&last=…``: tags in one repository;
- ``_catalog?n=100&last=…``: repositories;
- ``referrers/<digest>?n=100``: referrers of one subject (rows in the referrers table);
- ``GET /api/v1/plugins?limit=100``: one plugin repository among ``size`` others;
- ``GET /api/v1/assemblies?repository=…&limit=20``: jobs of one repository among ``size``.

Data is written straight to disk and to SQLite (the store indexes it at start; that time
is printed as "index build"), so large sizes take seconds to set up, not hours of pushes.
A flat curve (a page at 10,000 items within 2x of the page at 100) is the target.

``--backend registry`` times ``_catalog?n=100&last=…`` with docker-registry behind
algomint instead: ``size`` repositories written into docker-registry's storage directory
(a ``_layers`` directory each, what its catalog walk looks for), pages served from
algomint's own repository index once its first walk of upstream's catalog has finished
(that walk's time is printed as "catalog walk (start)").

    python bench/bench_listings.py --sizes 100,1000,10000 --repeat 30
    python bench/bench_listings.py --backend registry --sizes 100,1000,10000 --repeat 30
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import ClientSession, web

from proxy.api.state import REGISTRY
from proxy.app import create_app
from tests.conftest import make_config
from tests.support.distribution import run_distribution

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
SUBJECT = "sha256:" + "5" * 64


def seed_store(root: Path, size: int) -> None:
    """``size`` tags in bench/tags, ``size`` repositories under bench/r…, one plugin."""
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE}).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    blob = root / "blobs" / "sha256" / digest[7:9] / digest[7:]
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(manifest)

    def repository(name: str, tags: int) -> None:
        manifests = root / "repositories" / name / "_manifests"
        revision = manifests / "revisions" / "sha256" / digest[7:]
        revision.parent.mkdir(parents=True, exist_ok=True)
        revision.write_text(json.dumps({"mediaType": MANIFEST_TYPE}))
        (manifests / "tags").mkdir(exist_ok=True)
        for t in range(tags):
            (manifests / "tags" / f"t{t:06d}").write_text(digest)

    repository("bench/tags", size)
    for r in range(size):
        repository(f"bench/r{r:06d}", 1)
    repository("plugins/only", 1)


def seed_metadata(db: Path, size: int) -> None:
    conn = sqlite3.connect(db, timeout=60)
    with conn:
        conn.executemany(
            "INSERT INTO referrers VALUES ('bench/tags', ?, ?, ?, 600, 'application/vnd.example', NULL)",
            [(SUBJECT, "sha256:" + hashlib.sha256(str(i).encode()).hexdigest(), MANIFEST_TYPE) for i in range(size)],
        )
        conn.executemany(
            "INSERT INTO assembly_jobs (chain, source_repo, source_tag, source_digest, target_repo, target_tag,"
            " status, trigger, created) VALUES ('c', ?, 'v1', 'sha256:0', ?, 'v1', 'done', 'push', 0)",
            [(f"generic/r{i}", f"business/r{i}") for i in range(size)]
            + [("generic/mine", "business/mine")] * 30,
        )
    conn.close()


def after(size: int, template: str) -> str:
    """``last`` at the middle of the data, or earlier so that a whole page of 100 follows
    (none at 100 items): every size times a full page."""
    index = min(size // 2, size - 101)
    return template.format(index) if index >= 0 else ""


async def timed(session: ClientSession, url: str, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
            assert resp.status == 200, (url, resp.status)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1]


async def run_size(size: int, repeat: int, settle: float = 0.0) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="bench-listings-") as tmp:
        work = Path(tmp)
        seed_store(work / "storage", size)
        config = make_config(work, "filesystem")
        # A first start creates the metadata schema; the rows go in while nothing runs.
        runner = web.AppRunner(create_app(config))
        await runner.setup()
        await runner.cleanup()
        seed_metadata(work / "metadata.db", size)
        shutil.rmtree(work / "storage" / "_index")  # the second start rebuilds it: timed
        runner = web.AppRunner(create_app(config))
        start = time.perf_counter()
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        built = (time.perf_counter() - start) * 1000
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        urls = {
            "tags/list": "/v2/bench/tags/tags/list?n=100" + after(size, "&last=t{:06d}"),
            "_catalog": "/v2/_catalog?n=100" + after(size, "&last=bench/r{:06d}"),
            "referrers": f"/v2/bench/tags/referrers/{SUBJECT}?n=100",
            "plugins": "/api/v1/plugins?limit=100",
            "assemblies?repository": "/api/v1/assemblies?repository=generic/mine&limit=20",
        }
        results = {"index build (start)": (built, built)}
        await asyncio.sleep(settle)  # background work after start-up ends before timing
        try:
            async with ClientSession(base, trust_env=False) as session:
                for name, url in urls.items():
                    async with session.get(url) as resp:  # warm-up, and a check the page is full
                        body = await resp.json()
                    listed = next(v for k, v in body.items() if k in ("tags", "repositories", "manifests", "items"))
                    assert listed, (name, body)
                    await timed(session, url, 2)
                    results[name] = await timed(session, url, repeat)
        finally:
            await runner.cleanup()
        return results


def seed_distribution(root: Path, size: int) -> None:
    """``size`` repositories in docker-registry's storage, as its catalog walk finds them."""
    repositories = root / "docker" / "registry" / "v2" / "repositories"
    for r in range(size):
        (repositories / "bench" / f"r{r:06d}" / "_layers").mkdir(parents=True)


async def run_registry_size(size: int, repeat: int, settle: float = 0.0) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="bench-listings-") as tmp:
        work = Path(tmp)
        seed_distribution(work / "registry" / "storage", size)
        with run_distribution(work / "registry") as dist:
            config = make_config(work, "registry", dist)
            app = create_app(config)
            runner = web.AppRunner(app)
            start = time.perf_counter()
            await runner.setup()
            catalog = app[REGISTRY].repository_catalog
            while not catalog._reconciled:  # the first walk runs in the background
                await asyncio.sleep(0.01)
            walked = (time.perf_counter() - start) * 1000
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            url = "/v2/_catalog?n=100" + after(size, "&last=bench/r{:06d}")
            await asyncio.sleep(settle)
            try:
                async with ClientSession(f"http://127.0.0.1:{port}", trust_env=False) as session:
                    async with session.get(url) as resp:
                        assert (await resp.json())["repositories"], url
                    await timed(session, url, 2)
                    return {"catalog walk (start)": (walked, walked),
                            "_catalog (registry)": await timed(session, url, repeat)}
            finally:
                await runner.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--backend", choices=["filesystem", "registry"], default="filesystem")
    parser.add_argument("--settle", type=float, default=0.0, help="seconds to wait after start before timing")
    args = parser.parse_args()
    run = run_registry_size if args.backend == "registry" else run_size
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"# python bench/bench_listings.py --backend {args.backend} --sizes {args.sizes} --repeat {args.repeat}"
          f" --settle {args.settle}")
    print(f"# load average before: {os.getloadavg()[0]:.1f}")
    table: dict[str, list[str]] = {}
    for size in sizes:
        for name, (p50, p90) in (await run(size, args.repeat, args.settle)).items():
            table.setdefault(name, []).append(f"{p50:.1f} / {p90:.1f}")
        print(f"# {size:,}: " + ", ".join(f"{k} {v[-1]}" for k, v in table.items()), flush=True)
    print("| operation (p50 / p90 ms) | " + " | ".join(f"{s:,}" for s in sizes) + " |")
    print("| --- |" + " ---: |" * len(sizes))
    for name, cells in table.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
