"""Replicas benchmark, run by hand from the repository root (never in CI).

Two parts, both against a docker-registry backend this script starts:

1. **Cost in the metadata store** (in process): the app is created with its ``Database``
   wrapped to count what each request asks of it — statements and write transactions —
   and the round trips they take: on PostgreSQL counted on the wire (a relay in front of
   the database counts every Query and Sync message, ``tests/support/pgwire.py``, so
   prepares and pool resets show), on SQLite modelled (a statement is one call into the
   database thread, a write transaction adds its begin and commit). Write transactions
   are those that take the store's write lock (on SQLite every write; on PostgreSQL a
   single statement runs without it). Measured per manifest PUT (a tagged push, no
   chain), per manifest GET by tag, per blob upload (POST + PUT), and per assembly job
   (a one-plugin ``file`` chain, from the push to the job's end).
2. **Throughput** (real processes): ``algomint serve`` replicas (1, then 3 behind HAProxy
   or nginx, ``tests/support/cluster.py``) with auth on; ``--concurrency`` clients PUT then
   GET manifests of small images for ``--seconds``; then ``--jobs`` generic pushes through
   a ``file`` chain, timed until every assembly job has finished.

    python bench/bench_replicas.py [--store sqlite|postgres] [--seconds 10] [--jobs 60]

``--store postgres`` starts a throwaway PostgreSQL cluster (``tests/support/postgres.py``,
needs ``initdb``). Figures only mean something on an otherwise idle machine; the load
average is printed. Results and the analysis are in docs/performance.md ("Replicas").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import contextvars
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.distribution import run_distribution  # noqa: E402
from tests.support.pgwire import WireCounter, counting_relay  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ALGO_CONFIG = "application/vnd.algomint.algorithm.config.v1+json"
ALGORITHM = "application/vnd.algomint.algorithm.v1+json"
TITLE = "org.opencontainers.image.title"
DESCRIPTOR = {"name": "bench", "version": "1.0", "platform": "linux/amd64", "inputs": [], "outputs": [],
              "parameters": {}}


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- counting the store's work ------------------------------------------------------------
class Tally:
    """What the app asked of its ``Database``: statements and write transactions, and
    the round trips on the wire when there is one."""

    def __init__(self, wire: WireCounter | None) -> None:
        self.wire = wire
        self.counts: Counter[str] = Counter()

    def round_trips(self) -> int:
        if self.wire is not None:
            return self.wire.round_trips
        return self.counts["statements"] + 2 * self.counts["transactions"]  # BEGIN, COMMIT

    def snapshot(self) -> tuple[int, int, int]:
        return self.counts["statements"], self.counts["transactions"], self.round_trips()


_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("inside", default=False)


def count(db: Any, tally: Tally) -> None:
    """Wrap ``db``'s methods on the instance (every implementation has the same surface);
    a call one of them makes to another (``execute`` opening a transaction) counts once."""

    def wrap(name: str, statements: int, transactions: int) -> None:
        inner = getattr(db, name, None)
        if inner is None:  # an older store without it (to measure a previous release)
            return

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            if _INSIDE.get():
                return await inner(*args, **kwargs)
            tally.counts["statements"] += statements
            tally.counts["transactions"] += transactions
            token = _INSIDE.set(True)
            try:
                return await inner(*args, **kwargs)
            finally:
                _INSIDE.reset(token)

        setattr(db, name, wrapped)

    # One statement in its own transaction: under the write lock on SQLite only.
    wrap("execute", 1, 0 if tally.wire is not None else 1)
    wrap("execute_atomic", 1, 0)
    wrap("executemany_atomic", 1, 0)
    wrap("fetchone", 1, 0)
    wrap("fetchall", 1, 0)
    transaction = db.transaction

    @contextlib.asynccontextmanager
    async def counted(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if _INSIDE.get():
            async with transaction(*args, **kwargs) as tx:
                yield tx
            return
        tally.counts["transactions"] += 1
        async with transaction(*args, **kwargs) as tx:
            yield _CountedTx(tx, tally)

    db.transaction = counted


class _CountedTx:
    def __init__(self, tx: Any, tally: Tally) -> None:
        self._tx, self._tally = tx, tally

    def __getattr__(self, name: str) -> Any:
        inner = getattr(self._tx, name)
        if name not in ("execute", "executemany", "fetchone", "fetchall"):
            return inner

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            self._tally.counts["statements"] += 1
            return await inner(*args, **kwargs)

        return wrapped


async def measure_costs(work: Path, registry_url: str, metadata_url: str | None) -> dict[str, tuple[int, int, int]]:
    if metadata_url is None:
        return await _measure_costs(work, registry_url, None, Tally(None))
    async with counting_relay(metadata_url) as (relayed, wire):
        return await _measure_costs(work, registry_url, relayed, Tally(wire))


async def _measure_costs(work: Path, registry_url: str, metadata_url: str | None,
                         tally: Tally) -> dict[str, tuple[int, int, int]]:
    from aiohttp.test_utils import TestClient, TestServer

    from proxy.api.state import DATABASE
    from proxy.app import create_app
    from proxy.config import load_config

    env = {"ALGOMINT_STORAGE__BACKEND": "registry", "ALGOMINT_STORAGE__URL": registry_url,
           "ALGOMINT_METADATA__PATH": str(work / "metadata.db"), "ALGOMINT_ASSEMBLY__POLL_INTERVAL": "0.2",
           "ALGOMINT_ASSEMBLY__WORKDIR": str(work / "work")}
    if metadata_url:
        env["ALGOMINT_METADATA__URL"] = metadata_url
    app = create_app(load_config(None, environ=env))
    count(app[DATABASE], tally)
    client = TestClient(TestServer(app))
    await client.start_server()
    costs: dict[str, tuple[int, int, int]] = {}
    try:
        async def per(label: str, n: int, action: Callable[[int], Any]) -> None:
            await asyncio.sleep(0.5)  # let background pollers settle; their share is subtracted below
            idle_before = tally.snapshot()
            await asyncio.sleep(2.0)
            idle = [(b - a) / 2.0 for a, b in zip(idle_before, tally.snapshot())]
            before, started = tally.snapshot(), time.perf_counter()
            for i in range(n):
                await action(i)
            elapsed = time.perf_counter() - started
            spent = [b - a for a, b in zip(before, tally.snapshot())]
            costs[label] = tuple(max(0.0, round((s - i * elapsed) / n, 1)) for s, i in zip(spent, idle))  # type: ignore[assignment]

        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        layer = os.urandom(1024)
        for blob in (config, layer):
            await client.post(f"/v2/images/bench/blobs/uploads/?digest={_digest(blob)}", data=blob)

        def image(i: int) -> bytes:
            return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": _digest(config), "size": len(config)},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                           "digest": _digest(layer), "size": len(layer)}],
                               "annotations": {"n": str(i)}}).encode()

        async def put(i: int) -> None:
            resp = await client.put(f"/v2/images/bench/manifests/v{i}", data=image(i), headers={"Content-Type": OCI_MANIFEST})
            assert resp.status == 201, await resp.text()

        async def get(i: int) -> None:
            resp = await client.get(f"/v2/images/bench/manifests/v{i}", headers={"Accept": OCI_MANIFEST})
            assert resp.status == 200
            await resp.read()

        async def upload(i: int) -> None:
            blob = os.urandom(4096)
            resp = await client.post("/v2/images/bench/blobs/uploads/")
            location = resp.headers["Location"]
            resp = await client.put(f"{location}{'&' if '?' in location else '?'}digest={_digest(blob)}", data=blob)
            assert resp.status == 201

        await per("manifest PUT (tag)", 50, put)
        await per("manifest GET (tag)", 50, get)
        await per("blob upload (POST+PUT)", 30, upload)

        plugin = {"name": "stamp", "version": "1.0", "kind": "file", "options": {},
                  "files": [{"path": "stamp.txt", "data": base64.b64encode(b"stamp").decode()}]}
        assert (await client.post("/api/v1/plugins", json=plugin)).status == 201
        chain = {"name": "bench", "match": ["generic/bench*"], "plugins": ["plugins/stamp:1.0"], "params": {}}
        assert (await client.post("/api/v1/chains", json=chain)).status == 201
        descriptor = json.dumps(DESCRIPTOR).encode()
        await client.post(f"/v2/generic/bench/blobs/uploads/?digest={_digest(descriptor)}", data=descriptor)

        async def assemble(i: int) -> None:
            doc = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ALGORITHM,
                              "config": {"mediaType": ALGO_CONFIG, "digest": _digest(descriptor), "size": len(descriptor)},
                              "layers": [], "annotations": {"n": str(i)}}).encode()
            resp = await client.put(f"/v2/generic/bench/manifests/{i}.0", data=doc, headers={"Content-Type": OCI_MANIFEST})
            assert resp.status == 201, await resp.text()
            for _ in range(400):
                jobs = (await (await client.get("/api/v1/assemblies", params={"limit": "1"})).json())["items"]
                if jobs and jobs[0]["source"]["tag"] == f"{i}.0" and jobs[0]["status"] in ("succeeded", "failed"):
                    assert jobs[0]["status"] == "succeeded", jobs[0]
                    return
                await asyncio.sleep(0.02)
            raise RuntimeError("assembly did not finish")

        await per("generic push + assembly job (incl. status polls)", 10, assemble)
    finally:
        await client.close()
    return costs


# -- throughput through the balancer ---------------------------------------------------------
async def throughput(url: str, auth: dict[str, str], seconds: float, concurrency: int) -> tuple[float, float, dict]:
    """Manifest PUTs then GETs per second over ``concurrency`` clients, and the requests
    that failed (counted, not in the rates)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    repo = f"images/tp-{os.urandom(4).hex()}"
    async with aiohttp.ClientSession(url, headers=auth) as http:
        await http.post(f"/v2/{repo}/blobs/uploads/?digest={_digest(config)}", data=config)

        def doc(n: str) -> bytes:
            return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": _digest(config), "size": len(config)},
                               "layers": [], "annotations": {"n": n}}).encode()

        failed: list[int] = []
        made = [0] * concurrency

        async def run(worker: int, op: str, done: list[int]) -> None:
            deadline, i = time.monotonic() + seconds, 0
            while time.monotonic() < deadline:
                # PUTs cycle over 50 tags per client; GETs over those its PUTs made.
                tag = f"w{worker}-{i % (50 if op == 'put' else max(1, min(50, made[worker])))}"
                if op == "put":
                    resp = await http.put(f"/v2/{repo}/manifests/{tag}", data=doc(f"{worker}-{i}"),
                                          headers={"Content-Type": OCI_MANIFEST})
                else:
                    resp = await http.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
                await resp.read()
                (done if resp.status in (200, 201) else failed).append(resp.status)
                i += 1
                if op == "put" and resp.status == 201:
                    made[worker] = max(made[worker], i)  # tags up to here exist (a failed one is retried later)

        rates = []
        for op in ("put", "get"):
            done: list[int] = []
            started = time.monotonic()
            await asyncio.gather(*(run(w, op, done) for w in range(concurrency)))
            rates.append(len(done) / (time.monotonic() - started))
    return rates[0], rates[1], dict(Counter(failed))


async def assembly_rate(url: str, auth: dict[str, str], jobs: int) -> float:
    uid = os.urandom(3).hex()
    descriptor = json.dumps(DESCRIPTOR).encode()
    async with aiohttp.ClientSession(url, headers=auth) as http:
        plugin = {"name": f"stamp{uid}", "version": "1.0", "kind": "file", "options": {},
                  "files": [{"path": "stamp.txt", "data": base64.b64encode(b"stamp").decode()}]}
        resp = await http.post("/api/v1/plugins", json=plugin)
        assert resp.status == 201, await resp.text()
        chain = {"name": f"b{uid}", "match": [f"generic/b{uid}"], "plugins": [f"plugins/stamp{uid}:1.0"], "params": {}}
        resp = await http.post("/api/v1/chains", json=chain)
        assert resp.status == 201, await resp.text()
        await asyncio.sleep(1)  # every replica has seen the chain
        repo = f"generic/b{uid}"
        await http.post(f"/v2/{repo}/blobs/uploads/?digest={_digest(descriptor)}", data=descriptor)
        started = time.monotonic()
        for i in range(jobs):
            doc = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ALGORITHM,
                              "config": {"mediaType": ALGO_CONFIG, "digest": _digest(descriptor), "size": len(descriptor)},
                              "layers": [], "annotations": {"n": str(i)}}).encode()
            resp = await http.put(f"/v2/{repo}/manifests/{i}.0", data=doc, headers={"Content-Type": OCI_MANIFEST})
            assert resp.status == 201
        while True:
            items = (await (await http.get("/api/v1/assemblies", params={"repository": repo, "limit": "500"})).json())["items"]
            if len(items) >= jobs and all(j["status"] in ("succeeded", "failed") for j in items):
                return jobs / (time.monotonic() - started) * 60
            await asyncio.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}, store {args.store}")
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-replicas-")))
        dist = stack.enter_context(run_distribution(work / "registry"))
        pg = None
        if args.store == "postgres":
            from tests.support.postgres import run_postgres

            pg = stack.enter_context(run_postgres())
        costs = asyncio.run(measure_costs(work / "inproc", dist.url, pg.create_database() if pg else None))
        print("\nper operation: statements, write transactions, round trips (background polling subtracted)")
        for label, (statements, transactions, trips) in costs.items():
            print(f"  {label:50s} {statements:6.1f} {transactions:6.1f} {trips:6.1f}")
        if args.skip_throughput:
            return
        from tests.support.cluster import ADMIN_PASSWORD, run_cluster

        auth = {"Authorization": aiohttp.encode_basic_auth("admin", ADMIN_PASSWORD)}
        for replicas in (1, 3):
            store = pg.create_database() if pg else str(work / f"shared-{replicas}.db")
            with run_cluster(work / f"cluster-{replicas}", dist, store, replicas=replicas) as cluster:
                puts, gets, failed = asyncio.run(throughput(cluster.url, auth, args.seconds, args.concurrency))
                jobs = asyncio.run(assembly_rate(cluster.url, auth, args.jobs))
            print(f"\n{replicas} replica(s) behind the balancer, {args.store}: manifest PUT {puts:.0f}/s, "
                  f"GET {gets:.0f}/s ({args.concurrency} clients; failed by status: {failed or 'none'}); assembly {jobs:.0f} jobs/min")


if __name__ == "__main__":
    main()
