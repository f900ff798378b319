"""Full packages benchmark, run by hand from the repository root (never in CI).

One run starts Debian's docker-registry and ``algomint serve`` in front of it (storage
``backend = "registry"``), each on a free loopback port, and prints:

1. archive download MB/s of a full package whose runtime image has one 1 GiB layer
   (``GET /api/v1/archive/<business>:<version>-full`` with ``curl -o /dev/null``) beside
   pulling the same blobs directly from docker-registry with curl, in the same run
   (target >= 0.85x); then algomint's peak RSS (``VmHWM``) during four concurrent archive
   downloads as the package grows from 256 MiB to 2 GiB (target <= 200 MiB, flat);
2. full-build throughput (``soft`` license) on an image whose 1 GiB gzip layer holds one
   1 GiB model file, once per ``[full_builds] layer_compression`` value given
   (``--compression``, default ``auto,auto:store,gzip``: ``auto`` makes its uncompressed
   sealed layer on each pull, ``auto:store`` stores it; one ``algomint serve`` on its embedded
   filesystem storage each), beside the floor of only decompressing and recompressing
   that layer gzip -> gzip (isal level 1, two compression threads) in one process,
   measured right after each build (target >= 1.0x). Each build starts from a package a
   chain assembled (a generic push, two business systems) and runs to ``succeeded``:
   scan, rewrite with encryption, upload, config, manifests, index, tags. Per mode: the
   server's CPU-seconds per GB, its peak RSS, the new layer's codec and size, and the
   seconds the second business system's build takes (it reuses the licensed image), and
   a pull of the new layer beside a pull of the (stored) source layer, with curl;
   then the CPU-seconds per GB of each stage (inflate, seal, SHA-256, gzip), one thread
   each, on the same layer.

Needs ``docker-registry`` and ``curl`` (``apt-get install docker-registry curl``).
MB = 10^6 bytes, MiB = 2^20.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import os
import resource
from datetime import datetime
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_registry as core  # noqa: E402
from isal import igzip, igzip_threaded, isal_zlib  # noqa: E402

from packer.licensing.envelope import Encryptor  # noqa: E402
from packer.licensing.keys import generate_keypair  # noqa: E402
from tests.support.distribution import run_distribution  # noqa: E402
from tests.support.server import run_server  # noqa: E402

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ALGO_CONFIG = "application/vnd.algomint.algorithm.config.v1+json"
GENERIC = "application/vnd.algomint.algorithm.v1+json"
_URLOPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


def api(base: str, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with _URLOPEN(req, timeout=60) as resp:
        return json.loads(resp.read())


def put_manifest(base: str, repo: str, tag: str, doc: dict) -> str:
    data = json.dumps(doc).encode()
    with core._request("PUT", f"{base}/v2/{repo}/manifests/{tag}", data, {"Content-Type": OCI_MANIFEST}):
        return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(registry: str, repo: str, layer: core.Blob, diff_id: str, media_type: str,
               mount_from: str | None = None) -> float:
    """Push a one-layer image tagged v1 (its layer mounted from ``mount_from`` if given);
    returns the seconds the layer upload took."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_digest = core.push_small_blob(registry, repo, config)
    if mount_from is not None:
        url = f"{registry}/v2/{repo}/blobs/uploads/?mount={layer.digest}&from={mount_from}"
        with core._request("POST", url) as resp:
            assert resp.status == 201, resp.status
        seconds = 0.0
    else:
        seconds = core.upload_file(registry, repo, layer)
    put_manifest(registry, repo, "v1", {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": media_type, "digest": layer.digest, "size": layer.size}],
    })
    return seconds


def setup_chains(base: str, systems: tuple[str, ...] = ("bench", "other")) -> None:
    """Business systems that assemble every ``generic/bm-*`` package (a file plugin adds
    one form file): each generic push becomes one business package per system."""
    form = {"name": "bench-form", "version": "1.0", "kind": "file",
            "options": {"files": [{"source": "form.json", "path": "business/form.json"}]},
            "files": [{"path": "form.json", "data": base64.b64encode(b'{"fields": []}').decode()}]}
    api(base, "POST", "/api/v1/plugins", form)
    for name in systems:
        api(base, "POST", "/api/v1/chains", {"name": name, "match": ["generic/bm-*"], "plugins": ["plugins/bench-form:1.0"]})


def push_business(base: str, name: str, image: str, models: list[str], systems: tuple[str, ...] = ("bench", "other"),
                  timeout: float = 60) -> None:
    """Push ``generic/<name>:1.0`` naming ``image`` and wait until every system has
    assembled ``business/<system>/<name>:1.0`` from it."""
    repo = f"generic/{name}"
    config = json.dumps({"name": name, "version": "1.0", "platform": "linux/amd64", "inputs": [], "outputs": [],
                         "parameters": {}, "runtime": {"images": [{"ref": image, "models": models}]}}).encode()
    digest = core.push_small_blob(base, repo, config)
    source = put_manifest(base, repo, "1.0", {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": GENERIC,
        "config": {"mediaType": ALGO_CONFIG, "digest": digest, "size": len(config)}, "layers": [],
    })
    deadline = time.monotonic() + timeout
    for system in systems:
        while True:
            try:
                with _URLOPEN(urllib.request.Request(f"{base}/v2/business/{system}/{name}/manifests/1.0",
                                                     headers={"Accept": OCI_MANIFEST}), timeout=60) as resp:
                    if json.loads(resp.read()).get("subject", {}).get("digest") == source:
                        break
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"business/{system}/{name}:1.0 was not assembled")
            time.sleep(0.05)


def full_build(base: str, package: str, license: str) -> tuple[dict, float]:
    """Run a build to its end; (record, seconds from submission to success). The API's
    times are whole seconds, too coarse for a build of a few seconds, so the clock is the
    benchmark's own, polling every 50 ms (a GET of a build record is cheap beside it)."""
    started = time.monotonic()
    build = api(base, "POST", "/api/v1/full-builds", {"package": package, "license": license})
    while build["state"] in ("queued", "running"):
        time.sleep(0.05)
        build = api(base, "GET", f"/api/v1/full-builds/{build['id']}")
    seconds = time.monotonic() - started
    if build["state"] != "succeeded":
        raise RuntimeError(f"full build failed: {build.get('error')}")
    return build, seconds


def seconds_between(record: dict, first: str, last: str) -> float:
    """Seconds between two of a record's ISO-8601 times (as every management API answer gives them)."""
    start, end = (datetime.fromisoformat(record[k].replace("Z", "+00:00")) for k in (first, last))
    return (end - start).total_seconds()


def timed_curl(urls: list[str]) -> tuple[int, float]:
    """Fetch ``urls`` one after another in one curl process; (bytes, seconds)."""
    started = time.perf_counter()
    out = subprocess.run([*core.CURL[:-2], "-w", "%{size_download}\n", *[a for u in urls for a in ("-o", "/dev/null", u)]],
                         check=True, capture_output=True, text=True).stdout
    return sum(int(x) for x in out.split()), time.perf_counter() - started


def direct_urls(registry: str, business: str, tag: str) -> list[str]:
    """Every blob of the full package, straight from docker-registry."""
    def manifest(repo: str, ref: str) -> dict:
        req = urllib.request.Request(f"{registry}/v2/{repo}/manifests/{ref}", headers={
            "Accept": "application/vnd.oci.image.index.v1+json, " + OCI_MANIFEST})
        with _URLOPEN(req, timeout=60) as resp:
            return json.loads(resp.read())

    urls = [f"{registry}/v2/{business}/manifests/{tag}"]
    index = manifest(business, tag)
    for child in index["manifests"]:
        urls.append(f"{registry}/v2/{business}/manifests/{child['digest']}")
        doc = manifest(business, child["digest"])
        for blob in [doc["config"], *doc["layers"]]:
            urls.append(f"{registry}/v2/{business}/blobs/{blob['digest']}")
    return urls


def archive_rss(pid: int, url: str, downloads: int = 4) -> float:
    core.reset_peak_rss(pid)
    procs = [subprocess.Popen([*core.CURL, url], stdout=subprocess.PIPE, text=True) for _ in range(downloads)]
    for proc in procs:
        out = proc.communicate()[0]
        if not out.startswith("200"):
            raise RuntimeError(f"archive download answered {out}")
    return core.peak_rss_mib(pid)


def model_layer(path: Path, size: int) -> tuple[core.Blob, str]:
    """A gzip tar layer holding one ``size``-byte model file; (blob, diff_id)."""
    raw = core.make_blob(path.with_suffix(".model"), size)
    diff = hashlib.sha256()
    gz = path.with_suffix(".tar.gz")
    with open(gz, "wb") as out, igzip_threaded.open(out, "wb", compresslevel=1, threads=2) as packed:
        info = tarfile.TarInfo("opt/models/big.onnx")
        info.size = size
        header = info.tobuf(tarfile.PAX_FORMAT)
        packed.write(header)
        diff.update(header)
        with open(raw.path, "rb") as src:
            while piece := src.read(MiB):
                packed.write(piece)
                diff.update(piece)
        tail = b"\0" * (-size % 512) + b"\0" * 1024
        packed.write(tail)
        diff.update(tail)
    raw.path.unlink()
    digest = hashlib.sha256()
    with open(gz, "rb") as f:
        while piece := f.read(MiB):
            digest.update(piece)
    return core.Blob(gz, "sha256:" + digest.hexdigest(), gz.stat().st_size), "sha256:" + diff.hexdigest()


def floor_seconds(blob: core.Blob, level: int, threads: int) -> float:
    """Decompress and recompress the layer with the same codec and settings, nothing else."""
    class Sink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            return len(data)

    started = time.perf_counter()
    with open(blob.path, "rb") as src, igzip_threaded.open(src, "rb", threads=1) as inp, \
            igzip_threaded.open(Sink(), "wb", compresslevel=level, threads=threads) as out:
        while piece := inp.read(MiB):
            out.write(piece)
    return time.perf_counter() - started


def archive_part(args: argparse.Namespace, work: Path) -> None:
    """(1) archive throughput beside direct pulls, and memory as the package grows."""
    with run_distribution(work / "registry") as dist:
        config = (f'[storage]\nbackend = "registry"\nurl = "{dist.url}"\n'
                  f'[metadata]\npath = "{work / "metadata.db"}"\n[log]\nlevel = "warning"\n')
        with run_server(work / "algomint", config) as server:
            pid = server.process.pid
            setup_chains(server.url, ("bench",))
            sizes = [int(s) for s in args.rss_sizes.split(",")]
            packages = {}
            for mib in sorted({args.layer_mib, *sizes}):
                blob = core.make_blob(work / f"layer-{mib}.bin", mib * MiB)
                image, business = f"images/bench{mib}", f"business/bench/bm-archive{mib}"
                push_image(dist.url, image, blob, blob.digest, "application/vnd.oci.image.layer.v1.tar")
                blob.path.unlink()
                push_business(server.url, f"bm-archive{mib}", f"{image}:v1", [], systems=("bench",))
                full_build(server.url, f"{business}:1.0", "full")
                packages[mib] = business
            business = packages[args.layer_mib]
            url = f"{server.url}/api/v1/archive/{business}:1.0-full"
            direct = direct_urls(dist.url, business, "1.0-full")
            # algomint has read none of these blobs yet: the first download hashes every
            # one; later downloads find them in the ledger (verify_reads = "once").
            first_size, first_seconds = timed_curl([url])
            first = first_size / first_seconds / 1e6
            ours, theirs = [], []
            for _ in range(args.repeat):
                size, seconds = timed_curl([url])
                ours.append(size / seconds / 1e6)
                size2, seconds2 = timed_curl(direct)
                theirs.append(size2 / seconds2 / 1e6)
            a, d = statistics.median(ours), statistics.median(theirs)
            print(f"\n(1) archive of a full package with a {args.layer_mib} MiB layer "
                  f"({size / 1e6:.0f} MB tar; direct blobs {size2 / 1e6:.0f} MB), median of {args.repeat}:")
            print(f"    algomint archive {a:8.0f} MB/s | docker-registry direct {d:8.0f} MB/s | "
                  f"ratio {a / d:.2f}x (target >= 0.85x: {'met' if a / d >= 0.85 else 'NOT MET'})")
            print(f"    first download, every blob hashed: {first:8.0f} MB/s ({first / d:.2f}x)")
            peaks = {mib: archive_rss(pid, f"{server.url}/api/v1/archive/{packages[mib]}:1.0-full") for mib in sizes}
            print("    peak RSS during 4 concurrent archive downloads: "
                  + ", ".join(f"{mib} MiB package: {peak:.0f} MiB" for mib, peak in peaks.items())
                  + f" (target <= 200 MiB and flat: {'met' if max(peaks.values()) <= 200 else 'NOT MET'})")
            print(f"    algomint peak RSS over the whole run: {core.peak_rss_mib(pid):.0f} MiB")


def proc_cpu(pid: int) -> float:
    """CPU-seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stage_costs(blob: core.Blob) -> tuple[dict[str, float], int]:
    """CPU-seconds per GB of tar for each stage a build or the floor may run, one thread
    each, measured on the layer itself: (costs, the layer's tar size)."""
    spent = dict.fromkeys(("inflate", "seal (AES-256-GCM)", "sha256", "gzip level 1"), 0.0)
    sealer = Encryptor(os.urandom(32), os.urandom(16), 1 << 60)
    hasher, deflate = hashlib.sha256(), isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    total = 0

    def timed(stage: str, fn, *a):
        started = time.thread_time()
        out = fn(*a)
        spent[stage] += time.thread_time() - started
        return out

    with open(blob.path, "rb") as src, igzip.open(src, "rb") as inp:
        while piece := timed("inflate", inp.read, MiB):
            total += len(piece)
            timed("seal (AES-256-GCM)", sealer.update, piece)
            timed("sha256", hasher.update, piece)
            timed("gzip level 1", deflate.compress, piece)
    return {k: v / (total / 1e9) for k, v in spent.items()}, total


def build_part(args: argparse.Namespace, work: Path) -> None:
    """(2) full-build throughput on a model layer beside the codec floor, per
    ``layer_compression``, and the reuse of a licensed image by a second package."""
    blob, diff_id = model_layer(work / "model", args.layer_mib * MiB)
    layer_mb = blob.size / 1e6
    stages, tar_size = stage_costs(blob)
    floors: list[float] = []
    floor_cpu: list[float] = []
    rows = []
    for mode in args.compression.split(","):
        compression, _, sealed = mode.partition(":")
        slug = mode.replace(":", "-")  # in repository names and paths
        with contextlib.ExitStack() as stack:
            if args.build_storage == "registry":
                dist = stack.enter_context(run_distribution(work / f"registry-{slug}"))
                storage = f'[storage]\nbackend = "registry"\nurl = "{dist.url}"\n'
            else:
                storage = f'[storage]\npath = "{work / f"fs-{slug}"}"\n'
            config = (storage + f'[metadata]\npath = "{work / f"build-{slug}.db"}"\n[log]\nlevel = "warning"\n'
                      f'[full_builds]\nlayer_compression = "{compression}"\nsealed_layers = "{sealed or "synthesise"}"\n'
                      f'[licenses.soft]\nscheme = "x25519"\npublic_key = "{work / "soft.pub"}"\n')
            server = stack.enter_context(run_server(work / f"algomint-{slug}", config))
            pid = server.process.pid
            setup_chains(server.url)
            gzip_type = "application/vnd.oci.image.layer.v1.tar+gzip"
            upload = push_image(server.url, f"images/bm-{slug}-0", blob, diff_id, gzip_type)
            builds, cpus, waits = [], [], []
            core.reset_peak_rss(pid)
            for i in range(args.repeat):
                # A fresh image repository each time (the layer mounted, not pushed again):
                # the same image would reuse the first licensed image instead of building.
                image = f"images/bm-{slug}-{i}"
                if i:
                    push_image(server.url, image, blob, diff_id, gzip_type, mount_from=f"images/bm-{slug}-0")
                push_business(server.url, f"bm-{slug}-{i}", f"{image}:v1", ["opt/models/*.onnx"])
                before = proc_cpu(pid)
                build, seconds = full_build(server.url, f"business/bench/bm-{slug}-{i}:1.0", "soft")
                cpus.append(proc_cpu(pid) - before)
                assert build["result"]["images"][0]["encrypted_files"] == 1
                builds.append(seconds)
                waits.append(seconds_between(build, "created_at", "started_at"))
                # The floor right after, under the same load.
                before = self_cpu()
                floors.append(floor_seconds(blob, 1, 2))
                floor_cpu.append(self_cpu() - before)
            peak = core.peak_rss_mib(pid)
            licensed = api_manifest(server.url, "images/bm-{}-0".format(slug), "v1-soft")["layers"][0]
            # The same package for a second business system: the same image, license and
            # key, so the licensed image is reused.
            reuse, reuse_seconds = full_build(server.url, f"business/other/bm-{slug}-0:1.0", "soft")
            assert {layer["state"] for layer in reuse["layers"]} == {"reused"}
            # Where the cost of a sealed layer made on request goes: every pull. The new
            # layer's pull beside the source layer's (stored), from the same server.
            base = f"{server.url}/v2/images/bm-{slug}-0/blobs/"
            pulls = [timed_curl([base + licensed["digest"]]), timed_curl([base + blob.digest])]
            pull = [size / seconds / 1e6 for size, seconds in pulls]
            print(f"    [{mode}] build seconds {[round(b, 2) for b in builds]}, of which queued "
                  f"{[round(w, 2) for w in waits]}")
            rows.append((mode, statistics.median(builds), statistics.median(cpus), peak, licensed, reuse_seconds,
                         upload, pull))
    f = layer_mb / statistics.median(floors)
    gb = tar_size / 1e9
    print(f"\n(2) full build (soft) of a {args.layer_mib} MiB model layer ({layer_mb:.0f} MB gzip, "
          f"{args.build_storage} storage), medians of {args.repeat}; the floor (isal gzip -> gzip level 1, two "
          f"threads) measured after each build: {f:.0f} MB/s, {statistics.median(floor_cpu) / gb:.2f} CPU-s per GB")
    for mode, seconds, cpu, peak, licensed, reuse_seconds, upload, pull in rows:
        b = layer_mb / seconds
        print(f"    layer_compression = {mode:5}: {b:6.0f} MB/s | ratio {b / f:.2f}x of the floor "
              f"(target >= 1.0x: {'met' if b / f >= 1.0 else 'NOT MET'}) | {cpu / gb:.2f} CPU-s per GB (server) | "
              f"peak RSS {peak:.0f} MiB | new layer {licensed['mediaType'].rsplit('.', 1)[1]} "
              f"{licensed['size'] / 1e6:.0f} MB | second package reusing it: {reuse_seconds:.2f} s | "
              f"/v2 push of the source layer {layer_mb / upload:.0f} MB/s | pull of the new layer "
              f"{pull[0]:.0f} MB/s (of the stored source layer {pull[1]:.0f} MB/s)")
    print("    CPU-s per GB of tar by stage, one thread each, measured on this layer: "
          + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))


def api_manifest(base: str, repo: str, ref: str) -> dict:
    req = urllib.request.Request(f"{base}/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
    with _URLOPEN(req, timeout=60) as resp:
        return json.loads(resp.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer-mib", type=int, default=1024, help="size of the big layer (default 1024)")
    parser.add_argument("--rss-sizes", default="256,512,1024,2048", help="package sizes (MiB) for the RSS series")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["archive", "build"], help="run one part")
    parser.add_argument("--compression", default="auto,auto:store,gzip",
                        help="[full_builds] layer_compression values to build with, in turn, each with "
                             "':store' for sealed_layers = \"store\" (default auto,auto:store,gzip)")
    parser.add_argument("--build-storage", choices=["filesystem", "registry"], default="filesystem",
                        help="storage of the algomint that runs the full builds (default filesystem)")
    args = parser.parse_args()
    print("reproduce: python bench/bench_fullpkg.py " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="bench-fullpkg-") as tmp:
        work = Path(tmp)
        (work / "soft.pub").write_bytes(generate_keypair()[1])
        if args.only != "build":
            archive_part(args, work)
        if args.only != "archive":
            build_part(args, work)


if __name__ == "__main__":
    main()
