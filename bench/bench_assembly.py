"""Assembly benchmark, run by hand from the repository root (never in CI).

Starts ``algomint serve`` (embedded filesystem storage, ``[assembly] workers``, default 2)
on a free loopback port and a service plugin (a small aiohttp app) in this process, pushes
the plugins and two chains through the management API, then for each chain:

1. **latency** — ``--pushes`` (default 200) generic packages pushed one after another; for
   each, the time from the end of the manifest PUT (the push has returned) until the
   business tag answers ``HEAD`` with the new digest; p50/p90/p99/max;
2. **throughput** — ``--pushes`` more generic versions pushed back to back without waiting;
   jobs per minute from the first push to the last job finished.

Chains: ``file+service`` (the target: p50 <= 300 ms) and ``file+function+service``.
Each generic package is a descriptor and two files (64 KiB + a small per-version file).

    python bench/bench_assembly.py [--pushes 200] [--workers 2]

Figures only mean something on an otherwise idle machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.server import start_server  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ALGO_CONFIG = "application/vnd.algomint.algorithm.config.v1+json"
TITLE = "org.opencontainers.image.title"
MODEL = os.urandom(64 * 1024)
FUNCTION = b"""
def transform(package, context):
    package["descriptor"].setdefault("parameters", {})["system"] = context["system"]
    package["files"]["business/function.txt"] = "assembled for " + context["system"]
"""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _service_plugin() -> tuple[web.AppRunner, str]:
    async def transform(request: web.Request) -> web.Response:
        body = await request.json()
        package = body["package"]
        note = f"{body['context']['system']}:{body['context']['version']}".encode()
        package["files"].append({"path": "business/service.txt", "data": base64.b64encode(note).decode()})
        return web.json_response({"package": package})

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/transform", transform)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def _api(http: aiohttp.ClientSession, method: str, path: str, body: dict | None = None) -> dict:
    async with http.request(method, "/api/v1" + path, json=body) as resp:
        data = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data}")
        return data


async def _blob(http: aiohttp.ClientSession, repo: str, data: bytes) -> dict:
    digest = _digest(data)
    async with http.head(f"/v2/{repo}/blobs/{digest}") as resp:
        present = resp.status == 200
    if not present:
        async with http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, data=data) as resp:
            assert resp.status == 201, await resp.text()
    return {"digest": digest, "size": len(data)}


async def _push_generic(http: aiohttp.ClientSession, repo: str, tag: str) -> str:
    descriptor = json.dumps({"name": repo.rsplit("/", 1)[-1], "version": tag, "platform": "linux/amd64",
                             "parameters": {"threshold": 0.5}}).encode()
    files = {"model.onnx": MODEL, "VERSION": tag.encode()}
    layers = []
    for path, data in files.items():
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", **await _blob(http, repo, data),
                       "annotations": {TITLE: path}})
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": ALGO_CONFIG, **await _blob(http, repo, descriptor)}, "layers": layers}
    async with http.put(f"/v2/{repo}/manifests/{tag}", data=json.dumps(manifest),
                        headers={"Content-Type": OCI_MANIFEST}) as resp:
        assert resp.status == 201, await resp.text()
        return resp.headers["Docker-Content-Digest"]


async def _wait_business(http: aiohttp.ClientSession, repo: str, tag: str, source: str, timeout: float = 60) -> None:
    """Until business/<repo>:<tag> exists and was made from ``source``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with http.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}) as resp:
            if resp.status == 200 and json.loads(await resp.read()).get("subject", {}).get("digest") == source:
                return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"{repo}:{tag} did not appear")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _measure(http: aiohttp.ClientSession, chain: str, pushes: int) -> dict:
    generic = f"generic/{chain}"
    business = f"business/{chain}/{chain}"
    latencies = []
    for i in range(pushes):
        tag = f"1.{i}"
        source = await _push_generic(http, generic, tag)
        pushed = time.perf_counter()
        await _wait_business(http, business, tag, source)
        latencies.append((time.perf_counter() - pushed) * 1000)

    # Throughput: push everything, then wait for the last job.
    started = time.perf_counter()
    sources = [(f"2.{i}", await _push_generic(http, generic, f"2.{i}")) for i in range(pushes)]
    push_seconds = time.perf_counter() - started
    for tag, source in sources:
        await _wait_business(http, business, tag, source, timeout=600)
    elapsed = time.perf_counter() - started
    failed = (await _api(http, "GET", f"/assemblies?chain={chain}&status=failed"))["items"]
    return {
        "chain": chain,
        "p50": statistics.median(latencies), "p90": _pct(latencies, 0.9), "p99": _pct(latencies, 0.99),
        "max": max(latencies), "jobs_per_min": pushes / elapsed * 60, "push_seconds": push_seconds,
        "failed": len(failed),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pushes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    service_runner, service_url = await _service_plugin()
    workdir = Path(tempfile.mkdtemp(prefix="algomint-bench-assembly-"))
    config = (f'[storage]\npath = "{workdir / "storage"}"\n[metadata]\npath = "{workdir / "metadata.db"}"\n'
              f'[log]\nlevel = "warning"\n[assembly]\nworkers = {args.workers}\n'
              f'[plugins.service]\nallow = ["{service_url}/"]\n')
    server = await asyncio.to_thread(start_server, workdir, config)
    try:
        async with aiohttp.ClientSession(server.url) as http:
            form = {"name": "bench-form", "version": "1.0", "kind": "file",
                    "options": {"files": [{"source": "form.json", "path": "business/form.json"},
                                          {"source": "params.json", "merge_patch": "descriptor"}]},
                    "files": [{"path": "form.json", "data": base64.b64encode(b'{"fields":["badge"]}').decode()},
                              {"path": "params.json", "data": base64.b64encode(b'{"parameters":{"door":true}}').decode()}]}
            await _api(http, "POST", "/plugins", form)
            await _api(http, "POST", "/plugins", {"name": "bench-fn", "version": "1.0", "kind": "function",
                                                  "files": [{"path": "t.py", "data": base64.b64encode(FUNCTION).decode()}]})
            await _api(http, "POST", "/plugins", {"name": "bench-svc", "version": "1.0", "kind": "service",
                                                  "options": {"url": f"{service_url}/transform"}})
            chains = {
                "file-service": ["plugins/bench-form:1.0", "plugins/bench-svc:1.0"],
                "file-function-service": ["plugins/bench-form:1.0", "plugins/bench-fn:1.0", "plugins/bench-svc:1.0"],
            }
            for name, plugins in chains.items():
                await _api(http, "POST", "/chains", {"name": name, "match": [f"generic/{name}"], "plugins": plugins})
            print(f"python bench/bench_assembly.py --pushes {args.pushes} --workers {args.workers}")
            print(f"algomint {server.url}, {args.workers} workers, {args.pushes} pushes per measurement, "
                  f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
            print(f"{'chain':<24}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'jobs/min':>10}{'failed':>8}")
            for name in chains:
                r = await _measure(http, name, args.pushes)
                print(f"{r['chain']:<24}{r['p50']:9.1f}{r['p90']:9.1f}{r['p99']:9.1f}{r['max']:9.1f}"
                      f"{r['jobs_per_min']:10.0f}{r['failed']:8d}")
    finally:
        server.process.terminate()
        server.process.wait(30)
        await service_runner.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
