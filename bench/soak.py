"""Soak: a mixed load for minutes, the server's RSS every minute, then idle (by hand only).

For each backend (``--backends``: the embedded storage and/or docker-registry behind
algomint) and each auth mode (``--auth``: off, on), a fresh ``algomint serve`` process
gets ``--workers`` (16) concurrent clients for ``--minutes`` (10), each picking at random:

- push: a small image (one 1-32 KiB layer) into one of a few hundred repositories;
- chunked push: an image whose 0.25-4 MiB layer is uploaded in PATCH chunks;
- pull: a pushed image's manifest by tag and its layer, the bytes checked against the digest;
- assembly: a generic package push that a chain assembles into a business package;
- full build: a generic package naming a runtime image, waited for until assembled, then
  built (``full`` or ``soft`` license) and polled to its end, then downloaded as an archive;
- archive: a built package downloaded again as a tar;
- delete: a pushed image's manifest deleted by digest;
- listing: a catalog page and a tag page.

A webhook subscription receives every event at a receiver in this process. With auth on
every request carries Basic credentials (what CI clients and scripts send). RSS
(``VmRSS``) is read every ``--sample`` seconds (60); after the load stops the server idles
``--idle`` seconds (60) and is read again. The target: after idle, RSS within 10% of its
value after the first minute (the warm-up). Wrong bytes, 5xx and failed jobs are counted.

``--tracemalloc DIR`` starts the server with ``ALGOMINT_TRACEMALLOC=DIR`` (see
``proxy/memtrace.py``): a snapshot per interval, and at the end the top growth between the
snapshot after warm-up and the last one (by traceback) is printed.

    python bench/soak.py                                   # 10 min x 2 auth modes x 2 backends
    python bench/soak.py --backends filesystem --auth off --minutes 3 --tracemalloc /tmp/tm
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from packer.licensing.keys import generate_keypair
from tests.support.distribution import run_distribution
from tests.support.server import Server, start_server

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ALGO_CONFIG = "application/vnd.algomint.algorithm.config.v1+json"
GENERIC = "application/vnd.algomint.algorithm.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
PASSWORD = "soak-admin-password"
IMAGE = "images/soak"
# Operation weights: what a team's registry sees, reads ahead of writes.
MIX = {"push": 25, "pull": 35, "assembly": 10, "delete": 8, "listing": 10, "archive": 6, "full_build": 3,
       "chunked_push": 4}


@dataclass
class Stats:
    ops: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    server_errors: int = 0
    wrong_bytes: int = 0
    failed_builds: int = 0
    webhooks: int = 0
    errors: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(what)


@dataclass
class Shared:
    pushed: list[tuple[str, str, str, str]] = field(default_factory=list)  # repo, tag, manifest digest, layer digest
    built: list[str] = field(default_factory=list)  # archive references
    counter: int = 0

    def next(self) -> int:
        self.counter += 1
        return self.counter


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def rss_parts(pid: int) -> dict[str, float]:
    """RSS (MiB) by kind of mapping: the main malloc heap, anonymous mappings (thread
    arenas, large mallocs, Python's arenas), files."""
    parts = {"heap": 0.0, "anon": 0.0, "file": 0.0}
    kind = "file"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":") or fields[0] == "VmFlags:":
            if "-" in fields[0] and not fields[0].endswith(":"):
                name = fields[5] if len(fields) > 5 else ""
                kind = "heap" if name == "[heap]" else "anon" if not name or name.startswith("[anon") else "file"
            continue
        if fields[0] == "Rss:":
            parts[kind] += int(fields[1]) / 1024
    return parts


def malloc_trim(pid: int) -> bool:
    """``malloc_trim(0)`` in the server through gdb: how much of RSS is memory malloc
    holds free (fragmentation) rather than memory in use."""
    out = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (int) malloc_trim(0)"],
                         capture_output=True, text=True, timeout=120, check=False)
    return out.returncode == 0 and "$1 =" in out.stdout


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _model_layer() -> tuple[bytes, str]:
    """A gzip tar with one model file; (layer bytes, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = os.urandom(64 * 1024)
        info = tarfile.TarInfo("opt/models/m.onnx")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), 1), _digest(raw.getvalue())


class Client:
    def __init__(self, http: aiohttp.ClientSession, stats: Stats) -> None:
        self.http = http
        self.stats = stats

    async def call(self, method: str, path: str, expect: tuple[int, ...], **kw) -> tuple[int, bytes, dict]:
        async with self.http.request(method, path, **kw) as resp:
            body = await resp.read()
            self.stats.requests += 1
            if resp.status >= 500:
                self.stats.server_errors += 1
            if resp.status not in expect:
                self.stats.note(f"{method} {path}: {resp.status} {body[:200]!r}")
                raise RuntimeError(f"{method} {path}: {resp.status}")
            return resp.status, body, dict(resp.headers)

    async def blob(self, repo: str, data: bytes) -> dict:
        digest = _digest(data)
        await self.call("POST", f"/v2/{repo}/blobs/uploads/", (201,), params={"digest": digest}, data=data,
                        headers={"Content-Type": "application/octet-stream"})
        return {"digest": digest, "size": len(data)}

    async def manifest(self, repo: str, tag: str, doc: dict) -> str:
        data = json.dumps(doc).encode()
        await self.call("PUT", f"/v2/{repo}/manifests/{tag}", (201,), data=data, headers={"Content-Type": OCI_MANIFEST})
        return _digest(data)

    async def generic(self, name: str, version: str, runtime: dict | None = None) -> str:
        repo = f"generic/{name}"
        config = json.dumps({"name": name, "version": version, "platform": "linux/amd64", "inputs": [],
                             "outputs": [], "parameters": {}, **({"runtime": runtime} if runtime else {})}).encode()
        files = [(b"model-" + os.urandom(2048), "model.onnx")]
        layers = [{"mediaType": TAR, **await self.blob(repo, data), "annotations": {"org.opencontainers.image.title": path}}
                  for data, path in files]
        return await self.manifest(repo, version, {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": GENERIC,
            "config": {"mediaType": ALGO_CONFIG, **await self.blob(repo, config)}, "layers": layers})


async def push(c: Client, s: Shared, worker: int) -> None:
    n = s.next()
    repo, tag = f"soak/w{worker}-r{n % 13}", f"v{n}"
    layer = os.urandom(random.randint(1024, 32 * 1024))
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": n}).encode()
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": IMAGE_CONFIG, **await c.blob(repo, config)},
           "layers": [{"mediaType": TAR, **await c.blob(repo, layer)}]}
    digest = await c.manifest(repo, tag, doc)
    s.pushed.append((repo, tag, digest, _digest(layer)))
    del s.pushed[:-2000]  # a window of recent images to pull and delete


async def chunked_push(c: Client, s: Shared, worker: int) -> None:
    """An image whose 0.25-4 MiB layer goes up in PATCH chunks of up to 1 MiB."""
    n = s.next()
    repo, tag = f"soak/w{worker}-big{n % 5}", f"v{n}"
    layer = os.urandom(random.randint(256 * 1024, 4 * 1024 * 1024))
    _, _, headers = await c.call("POST", f"/v2/{repo}/blobs/uploads/", (202,))
    location = headers["Location"]
    offset = 0
    while offset < len(layer):
        piece = layer[offset:offset + random.randint(256 * 1024, 1024 * 1024)]
        _, _, headers = await c.call("PATCH", location, (202,), data=piece, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(piece) - 1}"})
        location = headers["Location"]
        offset += len(piece)
    digest = _digest(layer)
    await c.call("PUT", location, (201,), params={"digest": digest})
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": n}).encode()
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": IMAGE_CONFIG, **await c.blob(repo, config)},
           "layers": [{"mediaType": TAR, "digest": digest, "size": len(layer)}]}
    s.pushed.append((repo, tag, await c.manifest(repo, tag, doc), digest))


async def pull(c: Client, s: Shared, worker: int) -> None:
    if not s.pushed:
        return await push(c, s, worker)
    repo, tag, digest, layer = random.choice(s.pushed)
    status, body, _ = await c.call("GET", f"/v2/{repo}/manifests/{tag}", (200, 404), headers={"Accept": OCI_MANIFEST})
    if status == 404:  # deleted meanwhile
        return
    if _digest(body) != digest:
        c.stats.wrong_bytes += 1
    status, body, _ = await c.call("GET", f"/v2/{repo}/blobs/{layer}", (200, 404))
    if status == 200 and _digest(body) != layer:
        c.stats.wrong_bytes += 1


async def assembly(c: Client, s: Shared, worker: int) -> None:
    n = s.next()
    await c.generic(f"soak-a{n % 17}", f"1.{n}")


async def delete(c: Client, s: Shared, worker: int) -> None:
    if not s.pushed:
        return
    repo, _, digest, _ = s.pushed.pop(random.randrange(len(s.pushed)))
    await c.call("DELETE", f"/v2/{repo}/manifests/{digest}", (202, 404))


async def listing(c: Client, s: Shared, worker: int) -> None:
    await c.call("GET", "/v2/_catalog", (200,), params={"n": "100", "last": f"soak/w{worker}"})
    if s.pushed:
        await c.call("GET", f"/v2/{s.pushed[-1][0]}/tags/list", (200, 404), params={"n": "50"})


async def full_build(c: Client, s: Shared, worker: int) -> None:
    n = s.next()
    name, version = f"soak-f{worker}", f"2.{n}"
    source = await c.generic(name, version, {"images": [{"ref": f"{IMAGE}:v1", "models": ["opt/models/*.onnx"]}]})
    business = f"business/soak/{name}"
    deadline = time.monotonic() + 120
    while True:  # the chain assembles it
        status, body, _ = await c.call("GET", f"/v2/{business}/manifests/{version}", (200, 404),
                                       headers={"Accept": OCI_MANIFEST})
        if status == 200 and json.loads(body).get("subject", {}).get("digest") == source:
            break
        if time.monotonic() > deadline:
            c.stats.failed_builds += 1
            c.stats.note(f"{business}:{version} not assembled")
            return
        await asyncio.sleep(0.2)
    license = random.choice(("full", "soft"))
    _, body, _ = await c.call("POST", "/api/v1/full-builds", (201, 202),
                              json={"package": f"{business}:{version}", "license": license})
    build = json.loads(body)
    while build["state"] in ("queued", "running"):
        await asyncio.sleep(0.5)
        build = json.loads((await c.call("GET", f"/api/v1/full-builds/{build['id']}", (200,)))[1])
    if build["state"] != "succeeded":
        c.stats.failed_builds += 1
        c.stats.note(f"full build {build['id']}: {build.get('error')}")
        return
    s.built.append(f"{business}:{version}-{license}")
    await archive(c, s, worker, s.built[-1])


async def archive(c: Client, s: Shared, worker: int, reference: str | None = None) -> None:
    if not s.built:
        return
    reference = reference or random.choice(s.built)
    _, body, _ = await c.call("GET", f"/api/v1/archive/{reference}", (200,))
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:  # a whole, readable tar
        if not tar.getnames():
            c.stats.wrong_bytes += 1


OPS = {"push": push, "chunked_push": chunked_push, "pull": pull, "assembly": assembly, "delete": delete, "listing": listing,
       "archive": archive, "full_build": full_build}


async def worker_loop(c: Client, s: Shared, worker: int, until: float) -> None:
    names, weights = list(MIX), list(MIX.values())
    while time.monotonic() < until:
        op = random.choices(names, weights)[0]
        try:
            await OPS[op](c, s, worker)
            c.stats.ops[op] = c.stats.ops.get(op, 0) + 1
        except (TimeoutError, RuntimeError, aiohttp.ClientError, tarfile.TarError) as exc:
            c.stats.ops[op + " failed"] = c.stats.ops.get(op + " failed", 0) + 1
            c.stats.note(f"{op}: {type(exc).__name__}: {exc}")


async def receiver(stats: Stats) -> tuple[web.AppRunner, str]:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        stats.webhooks += 1
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


async def setup(c: Client, hook_url: str) -> None:
    form = {"name": "soak-form", "version": "1.0", "kind": "file",
            "options": {"files": [{"source": "form.json", "path": "business/form.json"}]},
            "files": [{"path": "form.json", "data": base64.b64encode(b'{"fields": []}').decode()}]}
    await c.call("POST", "/api/v1/plugins", (201,), json=form)
    await c.call("POST", "/api/v1/chains", (201,),
                 json={"name": "soak", "match": ["generic/soak-*"], "plugins": ["plugins/soak-form:1.0"]})
    await c.call("POST", "/api/v1/subscriptions", (201,), json={"url": f"{hook_url}/hook", "repositories": ["**"],
                 "events": ["generic.pushed", "business.assembled", "assembly.failed", "full.built"]})
    layer, diff_id = _model_layer()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    await c.manifest(IMAGE, "v1", {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                   "config": {"mediaType": IMAGE_CONFIG, **await c.blob(IMAGE, config)},
                                   "layers": [{"mediaType": TAR_GZ, **await c.blob(IMAGE, layer)}]})


def _config(work: Path, backend: str, registry_url: str | None, auth: bool, hook_url: str) -> str:
    storage = (f'[storage]\nbackend = "registry"\nurl = "{registry_url}"\n' if backend == "registry"
               else f'[storage]\npath = "{work / "storage"}"\n')
    return (storage + f'[metadata]\npath = "{work / "metadata.db"}"\n[log]\nlevel = "warning"\n'
            f"[auth]\nenabled = {str(auth).lower()}\n"
            f'[webhooks]\nallow = ["{hook_url}/"]\n'
            f'[licenses.soft]\nscheme = "x25519"\npublic_key = "{work / "soft.pub"}"\n')


def top_growth(first: Path, last: Path, limit: int = 15) -> list[str]:
    before = tracemalloc.Snapshot.load(str(first))
    after = tracemalloc.Snapshot.load(str(last))
    lines = []
    for stat in after.compare_to(before, "traceback")[:limit]:
        frames = [f"{f.filename.replace(str(ROOT) + '/', '')}:{f.lineno}" for f in stat.traceback][-6:]
        lines.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  " + " <- ".join(reversed(frames)))
    return lines


async def run_one(work: Path, backend: str, auth: bool, args: argparse.Namespace) -> dict:
    stats, shared = Stats(), Shared()
    hook_runner, hook_url = await receiver(stats)
    env = {"ALGOMINT_ADMIN_PASSWORD": PASSWORD, **dict(item.split("=", 1) for item in args.env)}
    if args.tracemalloc:
        trace_dir = Path(args.tracemalloc) / f"{backend}-auth-{'on' if auth else 'off'}"
        trace_dir.mkdir(parents=True, exist_ok=True)
        env |= {"ALGOMINT_TRACEMALLOC": str(trace_dir), "ALGOMINT_TRACEMALLOC_INTERVAL": str(args.sample)}
    with contextlib.ExitStack() as stack:
        registry_url = None
        if backend == "registry":
            registry_url = stack.enter_context(run_distribution(work / "registry")).url
        (work / "soft.pub").write_bytes(generate_keypair()[1])
        server: Server = await asyncio.to_thread(
            start_server, work / "algomint", _config(work, backend, registry_url, auth, hook_url), env, 60)
        try:
            pid = server.process.pid
            basic = {"Authorization": aiohttp.encode_basic_auth("admin", PASSWORD)} if auth else {}
            connector = aiohttp.TCPConnector(limit=args.workers * 2)
            timeout = aiohttp.ClientTimeout(total=300)
            async with aiohttp.ClientSession(server.url, headers=basic, connector=connector, timeout=timeout) as http:
                c = Client(http, stats)
                await setup(c, hook_url)
                samples = [(0.0, rss_mib(pid), os.getloadavg()[0])]
                parts = [rss_parts(pid)]
                start = time.monotonic()
                until = start + args.minutes * 60
                workers = [asyncio.create_task(worker_loop(Client(http, stats), shared, w, until))
                           for w in range(args.workers)]
                while time.monotonic() < until:
                    await asyncio.sleep(min(args.sample, max(0.0, until - time.monotonic())))
                    samples.append((time.monotonic() - start, rss_mib(pid), os.getloadavg()[0]))
                    parts.append(rss_parts(pid))
                    print(f"  {samples[-1][0]:6.0f} s  RSS {samples[-1][1]:6.1f} MiB  load {samples[-1][2]:.1f}  "
                          f"requests {stats.requests}  "
                          + " ".join(f"{k} {v:.1f}" for k, v in parts[-1].items()), flush=True)
                await asyncio.gather(*workers)
                loaded = rss_mib(pid)
                await asyncio.sleep(args.idle)
                idle = rss_mib(pid)
                idle_parts = rss_parts(pid)
                trimmed = rss_mib(pid) if args.trim_probe and malloc_trim(pid) else None
                jobs = json.loads((await c.call("GET", "/api/v1/assemblies", (200,),
                                                params={"status": "failed", "limit": "100"}))[1])["items"]
        finally:
            server.process.terminate()
            await asyncio.to_thread(server.process.wait, 60)
            await hook_runner.cleanup()
    warm = samples[1][1] if len(samples) > 1 else samples[0][1]
    result = {"backend": backend, "auth": auth, "samples": samples, "loaded": loaded, "idle": idle, "warm": warm,
              "ratio": idle / warm, "stats": stats, "failed_assemblies": len(jobs),
              "parts": parts, "idle_parts": idle_parts, "trimmed": trimmed}
    if args.tracemalloc:
        snaps = sorted(trace_dir.glob("snapshot-*.pickle"))
        if len(snaps) >= 3:
            result["growth"] = top_growth(snaps[1], snaps[-1])
    return result


def report(r: dict) -> None:
    s: Stats = r["stats"]
    print(f"\n{r['backend']}, auth {'on' if r['auth'] else 'off'}: RSS per minute (MiB): "
          + " -> ".join(f"{rss:.0f}" for _, rss, _ in r["samples"])
          + f"; end of load {r['loaded']:.0f}; after idle {r['idle']:.0f}; warm-up {r['warm']:.0f}; "
          f"idle/warm {r['ratio']:.2f} ({'met' if r['ratio'] <= 1.10 else 'NOT met'}: <= 1.10)")
    print(f"  requests {s.requests}, 5xx {s.server_errors}, wrong bytes {s.wrong_bytes}, failed builds "
          f"{s.failed_builds}, failed assemblies {r['failed_assemblies']}, webhooks received {s.webhooks}")
    print("  ops: " + ", ".join(f"{k} {v}" for k, v in sorted(s.ops.items())))
    print("  RSS by mapping (MiB), warm-up -> after idle: " + ", ".join(
        f"{k} {r['parts'][min(1, len(r['parts']) - 1)][k]:.1f} -> {r['idle_parts'][k]:.1f}" for k in r["idle_parts"]))
    if r["trimmed"] is not None:
        print(f"  after malloc_trim(0): RSS {r['trimmed']:.0f} MiB")
    print("  load average per minute: " + " ".join(f"{load:.1f}" for _, _, load in r["samples"]))
    for line in s.errors[:10]:
        print("  error:", line)
    for line in r.get("growth", []):
        print("  growth:", line)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--backends", default="filesystem,registry")
    parser.add_argument("--auth", default="off,on")
    parser.add_argument("--sample", type=float, default=60)
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--tracemalloc", help="directory for the server's tracemalloc snapshots")
    parser.add_argument("--trim-probe", action="store_true",
                        help="after idle, call malloc_trim(0) in the server (gdb) and read RSS again")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (e.g. MALLOC_ARENA_MAX=2)")
    args = parser.parse_args()
    print("# python bench/soak.py " + " ".join(sys.argv[1:]))
    print(f"# {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average {os.getloadavg()}")
    for backend in args.backends.split(","):
        for auth in args.auth.split(","):
            print(f"\n## {backend}, auth {auth}, {args.workers} workers, {args.minutes} min", flush=True)
            with tempfile.TemporaryDirectory(prefix="algomint-soak-") as tmp:
                report(await run_one(Path(tmp), backend, auth == "on", args))
    print(f"\n# load average after: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
