"""Garbage collection of the embedded storage, run by hand from the repository root.

Fills a fresh filesystem store (in a temp directory) with ``--images`` images of two
blobs each (a config and a 4 KiB layer), deletes every other one, ages everything past
the grace period, then times a dry run and a real run, and the p50/p99 of manifest pushes
made while the real run goes on compared with pushes on an idle store. In-process (the
collector and the registry service, no HTTP), so the figures are the collector's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.backend.filesystem import FilesystemBackend  # noqa: E402
from proxy.meta import SqliteDatabase  # noqa: E402
from proxy.oci import mediatypes as mt  # noqa: E402
from proxy.service import journal, referrers  # noqa: E402
from proxy.service.events import EventBus  # noqa: E402
from proxy.service.gc import Collector  # noqa: E402
from proxy.service.registry import RegistryService  # noqa: E402
from tests.support.oci import digest_of, image_manifest  # noqa: E402


async def _blob(backend: FilesystemBackend, repo: str, data: bytes) -> None:
    session = await backend.start_upload(repo)

    async def chunks():
        yield data

    await backend.finish_upload(repo, session.upload_id, digest_of(data), chunks())


async def _push(service: RegistryService, repo: str, tag: str) -> float:
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    layer = os.urandom(4096)
    started = time.perf_counter()
    await _blob(service.backend, repo, config)
    await _blob(service.backend, repo, layer)
    await service.put_manifest(repo, tag, image_manifest(config, [layer]), mt.OCI_MANIFEST)
    return time.perf_counter() - started


def _age(root: Path) -> None:
    past = time.time() - 7200
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(directory, name), (past, past))


def _quantiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms ({len(samples)} pushes)"


async def main(images: int, repos: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backend = FilesystemBackend(root / "storage")
        db = SqliteDatabase(root / "meta.db")
        await db.open()
        await db.migrate("referrers", referrers.SCHEMA)
        await db.migrate("journal", journal.SCHEMA)
        await backend.start()
        service = RegistryService(backend, referrers.ReferrersIndex(db, backend), EventBus(), journal.ChangeJournal(db))
        collector = Collector(backend, service, grace_period=3600, delete_untagged=False)
        digests = []
        for i in range(images):
            repo = f"bench/r{i % repos}"
            await _push(service, repo, f"t{i}")
            digests.append((repo, (await backend.stat_manifest(repo, f"t{i}")).digest))
        for repo, digest in digests[::2]:
            await service.delete_manifest(repo, digest)
        _age(root / "storage")
        idle = [await _push(service, "bench/idle", f"i{i}") for i in range(200)]

        started = time.perf_counter()
        dry = await collector.run(dry_run=True)
        dry_seconds = time.perf_counter() - started

        during: list[float] = []
        lags: list[float] = []

        async def lag() -> None:  # how late a 5 ms timer fires: time the loop was blocked
            while True:
                due = time.perf_counter() + 0.005
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - due)

        watcher = asyncio.create_task(lag())
        run = asyncio.create_task(collector.run(dry_run=False))
        started = time.perf_counter()
        n = 0
        while not run.done():
            during.append(await _push(service, "bench/busy", f"b{n}"))
            n += 1
        counts = await run
        seconds = time.perf_counter() - started
        watcher.cancel()
        await db.close()
    print(f"store: {images} images in {repos} repositories, half deleted; "
          f"{dry.blobs_scanned} content files, {dry.manifests_scanned} manifests")
    print(f"dry run: {dry_seconds:.2f} s, would remove {dry.blobs_removed} files, {dry.bytes_reclaimed} bytes")
    print(f"real run: {seconds:.2f} s, removed {counts.blobs_removed} files "
          f"({counts.layer_links_removed} layer links), {counts.bytes_reclaimed} bytes")
    print(f"pushes, idle store: {_quantiles(idle)}")
    if len(during) >= 2:
        print(f"pushes during the run: {_quantiles(during)}")
    print(f"event loop lag during the run: max {max(lags) * 1000:.1f} ms, "
          f"p99 {statistics.quantiles(lags, n=100)[98] * 1000:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repos", type=int, default=50)
    args = parser.parse_args()
    print("python3 bench/bench_gc.py " + " ".join(sys.argv[1:]))
    asyncio.run(main(args.images, args.repos))
