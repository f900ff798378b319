"""Registry core (/v2) benchmark, run by hand from the repository root (never in CI).

One run starts, each on a free loopback port: Debian's docker-registry (the reference),
nginx as a reverse proxy in front of it (the peer to beat), algomint in front of it twice
(with the default ``verify_reads``, which hashes every whole read of a registry backend,
and with ``verify_reads = "once"``, which trusts a blob after its first verified read),
algomint on its embedded filesystem storage, and nginx serving that same blob file
statically. It prints, side by side with the ratio to the reference:

- blob GET MB/s at concurrency 1 and 4 (``curl -s -o /dev/null`` processes; total bytes /
  wall time), after one first GET per system, and the ratio of verified to trusted GETs;
- manifest GET requests/s with p50/p99 at 16 connections, by tag and by digest (wrk);
- blob upload MB/s (session POST, then one monolithic ``curl -T`` PUT);
- algomint's peak RSS (``VmHWM``) while serving four concurrent whole-blob downloads.

Needs ``docker-registry``, ``nginx``, ``curl`` and ``wrk`` on PATH
(``apt-get install docker-registry nginx curl wrk``). MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.distribution import free_port, run_distribution  # noqa: E402
from tests.support.server import Server, run_server  # noqa: E402

REPO = "bench/blob"
TAG = "v1"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONNECTIONS = 16
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# Prints "<status> <bytes>"; the body goes nowhere.
CURL = ["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
# No proxy between us and loopback servers, whatever the environment says.
_URLOPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


# -- content -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Blob:
    path: Path
    digest: str
    size: int


def make_blob(path: Path, size: int) -> Blob:
    """``size`` random bytes (incompressible) written in 1 MiB pieces."""
    hasher = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            piece = os.urandom(min(left, 1 << 20))
            hasher.update(piece)
            out.write(piece)
            left -= len(piece)
    return Blob(path, "sha256:" + hasher.hexdigest(), size)


def _request(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, data=body if method in ("POST", "PUT") else None, method=method,
                                 headers=headers or {})
    return _URLOPEN(req, timeout=60)


def start_session(base: str, repo: str) -> str:
    """Open an upload session; its absolute URL."""
    with _request("POST", f"{base}/v2/{repo}/blobs/uploads/") as resp:
        return urllib.parse.urljoin(f"{base}/", resp.headers["Location"])


def _with_digest(session: str, digest: str) -> str:
    return f"{session}{'&' if '?' in session else '?'}digest={urllib.parse.quote(digest)}"


def push_small_blob(base: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with _request("PUT", _with_digest(start_session(base, repo), digest), data,
                  {"Content-Type": "application/octet-stream"}):
        return digest


def upload_file(base: str, repo: str, blob: Blob) -> float:
    """Push ``blob`` with one monolithic ``curl -T`` PUT; seconds the PUT took."""
    target = _with_digest(start_session(base, repo), blob.digest)
    started = time.perf_counter()
    out = _curl("-T", str(blob.path), "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                "-H", "Expect:", target)
    elapsed = time.perf_counter() - started
    if out.split()[0] != "201":
        raise RuntimeError(f"upload to {base} answered {out}")
    return elapsed


def push_image(base: str, blob: Blob) -> str:
    """``blob`` as the layer of a tagged OCI image in ``REPO``; the manifest digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    config_digest = push_small_blob(base, REPO, config.encode())
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob.digest,
                    "size": blob.size}],
    }).encode()
    with _request("PUT", f"{base}/v2/{REPO}/manifests/{TAG}", manifest, {"Content-Type": MANIFEST_TYPE}):
        return "sha256:" + hashlib.sha256(manifest).hexdigest()


# -- clients -------------------------------------------------------------------------------
def _curl(*args: str) -> str:
    return subprocess.run([*CURL, *args], check=True, capture_output=True, text=True).stdout


def fetch_mbps(url: str, concurrency: int, size: int) -> float:
    """``concurrency`` parallel ``curl -o /dev/null`` downloads; total MB / wall second."""
    started = time.perf_counter()
    procs = [subprocess.Popen([*CURL, url], stdout=subprocess.PIPE, text=True) for _ in range(concurrency)]
    outputs = [proc.communicate()[0] for proc in procs]
    elapsed = time.perf_counter() - started
    for proc, out in zip(procs, outputs):
        if proc.returncode != 0 or out.split() != ["200", str(size)]:
            raise RuntimeError(f"GET {url}: curl exit {proc.returncode}, answered {out!r}")
    return concurrency * size / elapsed / 1e6


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _latency(text: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if match is None:
        raise RuntimeError(f"wrk printed no {percentile}% latency:\n{text}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def load(url: str, seconds: int) -> Load:
    """wrk with ``CONNECTIONS`` keep-alive connections asking for an OCI manifest."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-H", f"Accept: {MANIFEST_TYPE}", url],
        check=True, capture_output=True, text=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk against {url} saw failures:\n{out}")
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if rps is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return Load(float(rps.group(1)), _latency(out, "50"), _latency(out, "99"))


# -- services ------------------------------------------------------------------------------
def _wait_for(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            _URLOPEN(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # answering at all is up
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.05)


_NGINX_CONF = """\
daemon off;
worker_processes auto;
user {user};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 0;
    sendfile on;
    tcp_nopush on;
    upstream registry {{
        server {registry};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{proxy_port};
        location / {{
            proxy_pass http://registry;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_http_version 1.1;
            proxy_buffer_size 1m;
            proxy_buffers 4 1m;
            proxy_busy_buffers_size 2m;
        }}
    }}
    server {{
        listen 127.0.0.1:{static_port};
        location = /blob {{
            alias {static_file};
            default_type application/octet-stream;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Nginx:
    proxy_url: str
    static_url: str
    pid: int  # the master; its workers are its children


@contextlib.contextmanager
def run_nginx(prefix: Path, registry_host: str, static_file: Path) -> Iterator[Nginx]:
    """nginx (not daemonised, own prefix and temp dirs) as proxy and static file server."""
    prefix.mkdir(parents=True)
    proxy_port, static_port = free_port(), free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(user=getpass.getuser(), prefix=prefix, registry=registry_host,
                                       proxy_port=proxy_port, static_port=static_port, static_file=static_file))
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)])
    try:
        proxy_url, static_url = f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{static_port}"
        _wait_for(proxy_url + "/v2/", proc, "nginx")
        yield Nginx(proxy_url, static_url + "/blob", proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def run_algomint(workdir: Path, storage: str) -> contextlib.AbstractContextManager[Server]:
    """``algomint serve`` with ``storage`` as its ``[storage]`` table body."""
    config = f'[storage]\n{storage}\n[metadata]\npath = "{workdir / "metadata.db"}"\n'
    return run_server(workdir, config)


def filesystem_blob(storage: Path, blob: Blob) -> Path:
    algorithm, encoded = blob.digest.split(":")
    return storage / "blobs" / algorithm / encoded[:2] / encoded


# -- memory --------------------------------------------------------------------------------
def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far (proc(5) stat 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """``cpu_seconds`` of a process and its children (nginx's master and workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(child)) for child in children)


def reset_peak_rss(pid: int) -> None:
    """Restart ``VmHWM`` from the current RSS (proc(5), ``clear_refs`` value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# -- figures -------------------------------------------------------------------------------
@dataclass
class Row:
    """One figure across systems; the first value is the reference the ratios divide by."""

    figure: str
    values: dict[str, float]
    digits: int = 0
    target: str = ""
    met: bool | None = None

    def ratio(self, name: str) -> float:
        return self.values[name] / next(iter(self.values.values()))


def interleaved(repeat: int, measures: dict[str, Callable[[int], float]]) -> dict[str, float]:
    """The median of ``repeat`` runs of each measure, taken in turns so that a slow
    spell of the machine touches every system alike."""
    runs: dict[str, list[float]] = {name: [] for name in measures}
    for i in range(repeat):
        for name, measure in measures.items():
            runs[name].append(measure(i))
    return {name: statistics.median(values) for name, values in runs.items()}


def print_table(title: str, columns: list[str], rows: list[Row]) -> None:
    print(f"\n{title}")
    header = f"{'figure':<30}" + "".join(f"{c:>26}" for c in columns) + "  target"
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for i, name in enumerate(columns):
            text = f"{row.values[name]:,.{row.digits}f}"
            cells.append(f"{text if i == 0 else f'{text} ({row.ratio(name):.2f}x)':>26}")
        verdict = "" if row.met is None else (" met" if row.met else " NOT MET")
        print(f"{row.figure:<30}" + "".join(cells) + f"  {row.target}{verdict}")


# -- the run -------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="blob size in MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each blob figure (default 5); the median is shown")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each manifest load (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, storage)")
    parser.add_argument("--blobs-only", action="store_true",
                        help="only the blob GETs behind docker-registry (no manifests, uploads, embedded storage)")
    return parser.parse_args()


def machine_note() -> str:
    versions = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, {versions}"


def load_note() -> str:
    """Other work on the machine skews every figure: say how busy it was."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def main() -> None:
    args = parse_args()
    size = args.size_mib * 1024 * 1024
    command = ["python", "bench/bench_registry.py", "--size-mib", str(args.size_mib), "--repeat", str(args.repeat),
               "--seconds", str(args.seconds)] + (["--blobs-only"] if args.blobs_only else [])
    print("reproduce:", shlex.join(command))
    print("machine:", machine_note())
    print("before:", load_note())
    work = Path(tempfile.mkdtemp(prefix="algomint-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            run(stack, work, size, args)
    finally:
        if args.keep:
            print(f"\nwork directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(stack: contextlib.ExitStack, work: Path, size: int, args: argparse.Namespace) -> None:
    blob = make_blob(work / "blob", size)
    registry = stack.enter_context(run_distribution(work / "registry"))
    remote = stack.enter_context(run_algomint(work / "algomint-registry",
                                              f'backend = "registry"\nurl = "{registry.url}"'))
    trusting = stack.enter_context(run_algomint(work / "algomint-registry-once",
                                                f'backend = "registry"\nurl = "{registry.url}"\nverify_reads = "once"'))
    embedded = stack.enter_context(run_algomint(work / "algomint-fs", f'path = "{work / "algomint-fs" / "storage"}"'))
    upload_file(registry.url, REPO, blob)
    digest = push_image(registry.url, blob)
    upload_file(embedded.url, REPO, blob)
    push_image(embedded.url, blob)
    nginx = stack.enter_context(run_nginx(work / "nginx", registry.host,
                                          filesystem_blob(work / "algomint-fs" / "storage", blob)))
    blob_path = f"/v2/{REPO}/blobs/{blob.digest}"
    proxied = {"docker-registry": registry.url, "nginx proxy": nginx.proxy_url, "algomint": remote.url,
               "algomint once": trusting.url}
    servers = {"algomint": remote, "algomint once": trusting, "algomint fs": embedded}
    whole_run_peak = {name: peak_rss_mib(s.process.pid) for name, s in servers.items()}
    for server in servers.values():
        reset_peak_rss(server.process.pid)

    # Whose CPU time each fetch is charged to (nginx: only while it proxies).
    pids = {name: s.process.pid for name, s in servers.items()} | {"nginx proxy": nginx.pid}
    cpu_per_gb: dict[str, list[float]] = {name: [] for name in pids}

    def fetch(name: str, url: str, concurrency: int) -> float:
        """``fetch_mbps``, noting the proxy's CPU-seconds per GB served: unlike MB/s, that
        cost hardly moves when other work shares the machine."""
        pid = pids.get(name)
        before = tree_cpu_seconds(pid) if pid else 0.0
        mbps = fetch_mbps(url, concurrency, size)
        if pid:
            cpu_per_gb[name].append((tree_cpu_seconds(pid) - before) / (concurrency * size / 1e9))
        return mbps

    def blob_rows(urls: dict[str, str]) -> list[Row]:
        return [
            Row(f"blob GET c{c} MB/s", interleaved(args.repeat, {
                name: lambda _, n=name, u=url: fetch(n, u, c) for name, url in urls.items()
            }))
            for c in (1, 4)
        ]

    # Neither algomint has read this blob yet (it was pushed to docker-registry directly),
    # so both hash their first whole GET; later, "algomint" hashes every GET (the default
    # for a registry backend) and "algomint once" finds the blob in its ledger.
    first_read = Row("first blob GET c1 MB/s (both algomints verify)",
                     {name: fetch_mbps(base + blob_path, 1, size) for name, base in proxied.items()})
    proxy_rows = [first_read, *blob_rows({name: base + blob_path for name, base in proxied.items()})]
    for row in proxy_rows[1:]:
        print(f"{row.figure}: verified / trusted = {row.values['algomint'] / row.values['algomint once']:.2f}x")
    if args.blobs_only:
        print("after:", load_note())
        judge(proxy_rows, [])
        print_table("Behind docker-registry (ratio to docker-registry directly)", list(proxied), proxy_rows)
        print("CPU-seconds per GB of blob GETs, after the first read (median): "
              + "; ".join(f"{name}: {statistics.median(v):.2f}" for name, v in cpu_per_gb.items() if v))
        return
    embedded_rows = blob_rows({"nginx static": nginx.static_url, "algomint fs": embedded.url + blob_path})
    download_peak = {name: peak_rss_mib(s.process.pid) for name, s in servers.items()}

    for label, reference in (("tag", TAG), ("digest", digest)):
        results = {name: load(f"{base}/v2/{REPO}/manifests/{reference}", args.seconds)
                   for name, base in proxied.items()}
        proxy_rows += [
            Row(f"manifest GET by {label} req/s", {n: r.rps for n, r in results.items()}),
            Row("  p50 ms", {n: r.p50_ms for n, r in results.items()}, digits=2),
            Row("  p99 ms", {n: r.p99_ms for n, r in results.items()}, digits=2),
        ]
    proxy_rows.append(Row("blob upload MB/s", interleaved(args.repeat, {
        name: lambda i, j=j, b=base: size / upload_file(b, f"bench/up{j}-{i}", blob) / 1e6
        for j, (name, base) in enumerate(proxied.items())
    })))
    whole_run_peak = {name: max(whole_run_peak[name], peak_rss_mib(s.process.pid)) for name, s in servers.items()}

    print("after:", load_note())
    judge(proxy_rows, embedded_rows)
    print_table("Behind docker-registry (ratio to docker-registry directly; latency in ms at "
                f"{CONNECTIONS} connections)", list(proxied), proxy_rows)
    print_table("Embedded storage (ratio to nginx serving the same file)", ["nginx static", "algomint fs"],
                embedded_rows)
    print("\nalgomint peak RSS (VmHWM): "
          + "; ".join(f"{name}: {download_peak[name]:.0f} MiB during the GETs (4 concurrent downloads), "
                      f"{whole_run_peak[name]:.0f} MiB over the whole run" for name in servers)
          + f"  target <= 100 MiB {'met' if max(download_peak.values()) <= 100 else 'NOT MET'}")
    print("CPU-seconds per GB of blob GETs, after the first read (median): "
          + "; ".join(f"{name}: {statistics.median(values):.2f}" for name, values in cpu_per_gb.items() if values))


def judge(proxy_rows: list[Row], embedded_rows: list[Row]) -> None:
    """Attach the issue's targets to the rows."""
    for row in proxy_rows:
        if row.figure.startswith("blob GET"):
            # Verified GETs against trusted ones: >= 0.85x at c1, >= 0.7x at c4.
            floor = 0.85 if "c1" in row.figure else 0.7
            row.target = f"verified >= {floor}x of once"
            row.met = row.values["algomint"] >= floor * row.values["algomint once"]
        elif "by tag" in row.figure:
            row.target, row.met = ">= 0.95x", row.ratio("algomint") >= 0.95
        elif "by digest" in row.figure:
            row.target, row.met = "> 1.00x", row.ratio("algomint") > 1.0
        elif "upload" in row.figure:
            row.target, row.met = ">= 0.9x", row.ratio("algomint") >= 0.9
    for row in embedded_rows:
        row.target, row.met = ">= 0.9x", row.ratio("algomint fs") >= 0.9


if __name__ == "__main__":
    main()
