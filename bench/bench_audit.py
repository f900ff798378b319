"""What acknowledging a mutation only once its audit record is on disk costs, run by hand
from the repository root (never in CI).

Starts three ``algomint serve`` processes on free loopback ports, on the embedded storage
(or, with ``--backend registry``, each in front of its own Debian docker-registry):
``audit off`` (``[audit] enabled = false``, the reference), ``audit on`` (the default:
every manifest PUT waits for its ``manifest.push`` record, group commit, each write
fsynced) and ``audit normal`` (``[audit] sync = "normal"``: the same without the fsync,
so a record survives a killed process but not a power cut). Then, for
each concurrency in ``--concurrency``, manifest PUTs (distinct tags, one small image)
from an aiohttp client in this process for ``--seconds``, and prints side by side with
the ratio to the reference (median of ``--repeat`` rounds, each round taking the
servers in turn, starting with a different one):

- manifest PUT requests/s;
- manifest PUT requests per CPU-second of the server process (user + system from /proc),
  which other load on the machine blurs far less than a rate;

Target (issue 10): requests/s with audit on >= 0.9x audit off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shlex
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_auth import cpu_seconds  # noqa: E402
from bench_registry import Row, load_note, print_table  # noqa: E402
from tests.support.distribution import run_distribution  # noqa: E402
from tests.support.oci import digest_of, image_manifest  # noqa: E402
from tests.support.server import Server, run_server  # noqa: E402

SYSTEMS = ("audit off", "audit on", "audit normal")
AUDIT = {"audit off": "enabled = false", "audit on": 'sync = "full"', "audit normal": 'sync = "normal"'}
REPO = "generic/bench-audit"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_BLOB = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
LAYER = b"bench layer " * 300


def _config(work: Path, audit: str, registry_url: str | None) -> str:
    storage = f'[storage]\npath = "{work / "storage"}"\n'
    if registry_url:
        storage += f'backend = "registry"\nurl = "{registry_url}"\n'
    return (storage + f'[metadata]\npath = "{work / "metadata.db"}"\n[log]\nlevel = "warning"\n'
            f"[audit]\n{audit}\n")


@dataclass(frozen=True)
class Measured:
    rps: float
    cpu_us: float


async def _seed(http: aiohttp.ClientSession) -> None:
    for blob in (CONFIG_BLOB, LAYER):
        async with http.post(f"/v2/{REPO}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob) as resp:
            assert resp.status == 201, await resp.text()


async def _put_for(server: Server, seconds: float, concurrency: int, tags: itertools.count) -> Measured:
    manifest = image_manifest(CONFIG_BLOB, [LAYER])
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(server.url, connector=connector) as http:
        done = 0
        cpu = cpu_seconds(server.process.pid)
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with http.put(f"/v2/{REPO}/manifests/t{next(tags)}", data=manifest,
                                    headers={"Content-Type": MANIFEST_TYPE}) as resp:
                    await resp.read()
                    if resp.status != 201:
                        raise RuntimeError(f"{server.url} answered {resp.status}: {await resp.text()}")
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server.process.pid) - cpu
    return Measured(done / elapsed, cpu / done * 1e6)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="duration of each measurement (default 5)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per figure; the median is shown (default 5)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated client concurrencies (default 1,16,64)")
    parser.add_argument("--backend", choices=["filesystem", "registry"], default="filesystem")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    print("reproduce:", shlex.join(["python", "bench/bench_audit.py", "--seconds", str(args.seconds), "--repeat",
                                    str(args.repeat), "--concurrency", args.concurrency, "--backend", args.backend]))
    print(f"before: {load_note()}")
    work = Path(tempfile.mkdtemp(prefix="algomint-bench-audit-"))
    try:
        with contextlib.ExitStack() as stack:
            servers: dict[str, Server] = {}
            for name in SYSTEMS:
                directory = work / name.replace(" ", "-")
                directory.mkdir()
                url = None
                if args.backend == "registry":
                    url = stack.enter_context(run_distribution(directory / "registry")).url
                servers[name] = stack.enter_context(run_server(directory, _config(directory, AUDIT[name], url)))
            asyncio.run(measure(servers, levels, args))
            db = sqlite3.connect(work / "audit-on" / "metadata.db")
            records = db.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0]
            db.close()
            print(f"\naudit records written by audit on: {records:,}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def measure(servers: dict[str, Server], levels: list[int], args: argparse.Namespace) -> None:
    tags = itertools.count()
    for server in servers.values():
        async with aiohttp.ClientSession(server.url) as http:
            await _seed(http)
        await _put_for(server, 1, 8, tags)  # warm up
    rates: list[Row] = []
    costs: list[Row] = []
    for level in levels:
        runs: dict[str, list[Measured]] = {name: [] for name in SYSTEMS}
        for i in range(args.repeat):
            for name in SYSTEMS[i % len(SYSTEMS):] + SYSTEMS[:i % len(SYSTEMS)]:
                runs[name].append(await _put_for(servers[name], args.seconds, level, tags))
        rate = Row(f"PUT c={level} req/s", {n: statistics.median(m.rps for m in r) for n, r in runs.items()})
        cost = Row(f"PUT c={level} req/CPU-s", {n: statistics.median(1e6 / m.cpu_us for m in r)
                                               for n, r in runs.items()})
        for row in (rate, cost):
            row.target, row.met = ">= 0.9x (audit on)", row.ratio("audit on") >= 0.9
        rates.append(rate)
        costs.append(cost)
    print("after:", load_note())
    print_table(f"Manifest PUT throughput ({args.backend} storage; ratio to audit off)", list(SYSTEMS), rates)
    print_table("Server CPU efficiency: manifest PUTs per CPU-second of the algomint process", list(SYSTEMS), costs)
    print(json.dumps({r.figure: r.values for r in rates + costs}))


if __name__ == "__main__":
    main()
