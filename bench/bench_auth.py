"""Authentication and audit cost, run by hand from the repository root (never in CI).

Starts three ``algomint serve`` processes on the embedded storage, on free loopback ports:

- ``auth off``: ``[auth] enabled = false``, ``[audit] enabled = false`` (the reference);
- ``audit on``: authentication off, the audit log on;
- ``auth+audit``: authentication on (a registry bearer token from ``/token`` on every
  request: signature, account and grants checked each time) and the audit log on.

and prints, side by side with the ratio to the reference (the median of ``--repeat``
rounds; each round measures every system once, starting with a different one):

- manifest GET requests/s (wrk, 16 connections) of a ``generic/…`` manifest (not
  recorded) and of a ``business/…`` manifest (every pull recorded in the audit log);
- small blob uploads/s (wrk, 4 connections, monolithic ``POST ?digest=`` of a 64 KiB
  blob; every upload is a recorded mutation);
- large blob upload MB/s (a session ``POST``, then one ``curl -T`` ``PUT``);
- for the wrk figures, requests per CPU-second of the server process (its user + system
  time from /proc over the run): the cost per request, which a busy machine blurs far
  less than a rate does.

The issue's target: every figure >= 0.9x of the reference. Needs ``wrk`` and ``curl``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shlex
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_registry import (  # noqa: E402
    CONNECTIONS, CURL, MANIFEST_TYPE, Row, _request, _with_digest, load_note, make_blob, print_table,
)
from tests.support.server import Server, run_server  # noqa: E402

ADMIN_PASSWORD = "bench-admin-password"
GENERIC, BUSINESS, UPLOADS = "generic/bench-app", "business/bench/app", "generic/bench-uploads"
SYSTEMS = ("auth off", "audit on", "auth+audit")
UPLOAD_CONNECTIONS = 4
_UPLOAD_LUA = """
local f = assert(io.open(os.getenv("BENCH_BLOB"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def _config(work: Path, auth: bool, audit: bool) -> str:
    return (f'[storage]\npath = "{work / "storage"}"\n[metadata]\npath = "{work / "metadata.db"}"\n'
            '[log]\nlevel = "warning"\n'
            f"[auth]\nenabled = {str(auth).lower()}\ntoken_ttl = 3600\n"
            # the benchmark seeds business/** over HTTP, which only algomint may do otherwise
            "system_namespaces = []\n"
            f"[audit]\nenabled = {str(audit).lower()}\n")


def _bearer(base: str) -> dict[str, str]:
    scopes = [f"repository:{r}:pull,push" for r in (GENERIC, BUSINESS, UPLOADS)]
    query = urllib.parse.urlencode([("service", "algomint"), *(("scope", s) for s in scopes)])
    basic = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    with _request("GET", f"{base}/token?{query}", headers={"Authorization": f"Basic {basic}"}) as resp:
        return {"Authorization": f"Bearer {json.loads(resp.read())['token']}"}


def _push(base: str, repo: str, data: bytes, headers: dict[str, str]) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url = _with_digest(f"{base}/v2/{repo}/blobs/uploads/", digest)
    with _request("POST", url, data, {**headers, "Content-Type": "application/octet-stream"}):
        return digest


def seed(base: str, repo: str, headers: dict[str, str]) -> None:
    """A small tagged image in ``repo``."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = os.urandom(4096)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _push(base, repo, config, headers),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _push(base, repo, layer, headers),
                    "size": len(layer)}],
    }).encode()
    with _request("PUT", f"{base}/v2/{repo}/manifests/v1", manifest, {**headers, "Content-Type": MANIFEST_TYPE}):
        pass


@dataclass(frozen=True)
class Measured:
    rps: float
    cpu_us: float  # the server's CPU time (user + system) per request


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(server: Server, path: str, seconds: int, headers: dict[str, str], connections: int = CONNECTIONS,
        script: Path | None = None, env: dict[str, str] | None = None) -> Measured:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-H", f"Accept: {MANIFEST_TYPE}"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    cpu = cpu_seconds(server.process.pid)
    out = subprocess.run([*argv, server.url + path], check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}).stdout
    cpu = cpu_seconds(server.process.pid) - cpu
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk against {server.url + path} saw failures:\n{out}")
    count = re.search(r"^\s*(\d+) requests in", out, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if count is None or rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return Measured(float(rate.group(1)), cpu / int(count.group(1)) * 1e6)


def upload_mbps(base: str, repo: str, blob, headers: dict[str, str]) -> float:
    with _request("POST", f"{base}/v2/{repo}/blobs/uploads/", headers=headers) as resp:
        session = urllib.parse.urljoin(f"{base}/", resp.headers["Location"])
    auth = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    started = time.perf_counter()
    out = subprocess.run([*CURL, *auth, "-T", str(blob.path), "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                          "-H", "Expect:", _with_digest(session, blob.digest)], check=True, capture_output=True,
                         text=True).stdout
    elapsed = time.perf_counter() - started
    if out.split()[0] != "201":
        raise RuntimeError(f"upload to {base} answered {out}")
    return blob.size / elapsed / 1e6


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="duration of each wrk run (default 5)")
    parser.add_argument("--repeat", type=int, default=6,
                        help="rounds per figure, each system once per round in rotating order; the median is shown")
    parser.add_argument("--size-mib", type=int, default=256, help="large upload size in MiB (default 256)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print("reproduce:", shlex.join(["python", "bench/bench_auth.py", "--seconds", str(args.seconds),
                                    "--repeat", str(args.repeat), "--size-mib", str(args.size_mib)]))
    print(f"machine: {os.cpu_count()} cores; before: {load_note()}")
    work = Path(tempfile.mkdtemp(prefix="algomint-bench-auth-"))
    try:
        with contextlib.ExitStack() as stack:
            run(stack, work, args)
    finally:
        if args.keep:
            print(f"\nwork directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(stack: contextlib.ExitStack, work: Path, args: argparse.Namespace) -> None:
    settings = {"auth off": (False, False), "audit on": (False, True), "auth+audit": (True, True)}
    servers: dict[str, Server] = {}
    headers: dict[str, dict[str, str]] = {}
    for name, (auth, audit) in settings.items():
        directory = work / name.replace(" ", "-").replace("+", "-")
        directory.mkdir()
        servers[name] = stack.enter_context(run_server(directory, _config(directory, auth, audit),
                                                       env={"ALGOMINT_ADMIN_PASSWORD": ADMIN_PASSWORD}))
        headers[name] = _bearer(servers[name].url) if auth else {}
        for repo in (GENERIC, BUSINESS):
            seed(servers[name].url, repo, headers[name])
    small = make_blob(work / "small", 64 * 1024)
    large = make_blob(work / "large", args.size_mib * 1024 * 1024)
    lua = work / "upload.lua"
    lua.write_text(_UPLOAD_LUA)

    def rotated(measure: Callable[[str], Measured | float]) -> dict[str, list]:
        """``--repeat`` rounds, each system once per round, each round starting with the
        next system: a busy spell of the machine, or going first, favours none of them."""
        runs: dict[str, list] = {name: [] for name in SYSTEMS}
        for i in range(args.repeat):
            for name in SYSTEMS[i % len(SYSTEMS):] + SYSTEMS[:i % len(SYSTEMS)]:
                runs[name].append(measure(name))
        return runs

    def per_system(measure: Callable[[str, Server], Measured]) -> tuple[dict[str, float], dict[str, float]]:
        runs = rotated(lambda name: measure(name, servers[name]))
        return ({n: statistics.median(m.rps for m in r) for n, r in runs.items()},
                {n: statistics.median(m.cpu_us for m in r) for n, r in runs.items()})

    for name, server in servers.items():  # warm up: first requests pay for lazy set-up
        wrk(server, f"/v2/{GENERIC}/manifests/v1", 2, headers[name])
    rates: list[Row] = []
    costs: list[Row] = []
    for figure, measure in (
        ("manifest GET generic", lambda n, s: wrk(s, f"/v2/{GENERIC}/manifests/v1", args.seconds, headers[n])),
        ("manifest GET business", lambda n, s: wrk(s, f"/v2/{BUSINESS}/manifests/v1", args.seconds, headers[n])),
        ("64 KiB blob upload", lambda n, s: wrk(s, _with_digest(f"/v2/{UPLOADS}/blobs/uploads/", small.digest),
                                                  args.seconds, headers[n], UPLOAD_CONNECTIONS, lua,
                                                  {"BENCH_BLOB": str(small.path)})),
    ):
        rps, cpu = per_system(measure)
        rates.append(Row(f"{figure} req/s", rps))
        # Capacity: requests per CPU-second, the figure a busy machine can't blur.
        costs.append(Row(f"{figure} req/CPU-s", {n: 1e6 / us for n, us in cpu.items()}))
    uploads = rotated(lambda n: upload_mbps(servers[n].url, UPLOADS, large, headers[n]))
    rates.append(Row(f"{args.size_mib} MiB blob upload MB/s", {n: statistics.median(v) for n, v in uploads.items()},
                     digits=1))
    for row in rates + costs:
        row.target = ">= 0.9x"
        row.met = all(row.ratio(name) >= 0.9 for name in row.values)
    print("after:", load_note())
    print_table("Throughput (ratio to auth off; with auth on, a bearer token on every request)", list(SYSTEMS), rates)
    print_table("Server CPU efficiency: requests per CPU-second of the algomint process", list(SYSTEMS), costs)
    db = sqlite3.connect(work / "auth-audit" / "metadata.db")
    print(f"\naudit records written by auth+audit: {db.execute('SELECT COUNT(*) FROM audit_log').fetchone()[0]:,}")
    db.close()
    steps = asyncio.run(step_costs(work / "steps"))
    per_get = 1e6 / costs[0].values["auth off"]
    print(f"\nCPU per step, in process (µs; a generic manifest GET costs {per_get:.0f} µs with auth off):")
    for step, micros in steps.items():
        print(f"  {step:<58}{micros:8.1f}")


async def step_costs(directory: Path, n: int = 20_000) -> dict[str, float]:
    """What authentication and audit add to one request, timed below HTTP (CPU time, so
    other work on the machine hardly shows)."""
    from proxy.audit import AuditEvent, AuditLog
    from proxy.auth.authenticator import Authenticator
    from proxy.auth.permissions import PermissionPolicy
    from proxy.auth.keyring import KeyRing
    from proxy.auth.ratelimit import LoginThrottle
    from proxy.auth.registry_token import TokenSigner
    from proxy.auth.store import SCHEMA, AuthStore
    from proxy.cluster import versions
    from proxy.meta import SqliteDatabase
    from proxy.service.policy import Action, Request

    def timed(fn: Callable[[], object]) -> float:
        started = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - started) / n * 1e6

    async def timed_async(fn: Callable[[], Awaitable[object]]) -> float:
        started = time.process_time()
        for _ in range(n):
            await fn()
        return (time.process_time() - started) / n * 1e6

    db = SqliteDatabase(directory / "metadata.db")
    await db.open()
    try:
        await db.migrate("auth", SCHEMA)
        await versions.migrate(db)  # changes are announced to other replicas there
        store = AuthStore(db, system_namespaces=["business/**"])
        await store.create_user("admin", kind="user", password_hash=None, roles=["admin"], created_by="bench")
        signer = TokenSigner(KeyRing.open(directory / "keys"), "algomint")
        token, _ = signer.issue("admin", "user", use="access", ttl=3600,
                                access=[{"type": "repository", "name": GENERIC, "actions": ["pull"]}])
        authenticator = Authenticator(store, signer, LoginThrottle(db, 5, 1.0, 30.0, 300))
        header = f"Bearer {token}"
        principal, _ = await authenticator.authorization(header, "127.0.0.1")
        policy = PermissionPolicy(store)
        request = Request(principal, Action.PULL, GENERIC, "v1", {"route": "v2.manifest.get"})
        log = AuditLog(db, flush_interval=3600, batch_size=n + 1)
        await log.start()
        event = dict(action="manifest.pull", outcome="success", actor="admin", actor_kind="user",
                     repository=BUSINESS, reference="v1", digest="sha256:" + "0" * 64, status=200,
                     client="127.0.0.1", user_agent="wrk", request_id="0" * 32)
        recorded = timed(lambda: log.record(AuditEvent(**event)))
        started = time.process_time()
        await log.flush()  # hash chain + one INSERT per record (the writer thread's CPU included)
        written = (time.process_time() - started) / n * 1e6
        await log.close()
        return {
            "bearer token, signature and claims (first use)": timed(lambda: signer.verify(token, "access")),
            "bearer token, every request (account re-checked)":
                await timed_async(lambda: authenticator.authorization(header, "127.0.0.1")),
            "permission check": await timed_async(lambda: policy.check(request)),
            "audit record, on the request path": recorded,
            "audit record, hashed and written (batched)": written,
        }
    finally:
        await db.close()


if __name__ == "__main__":
    main()
