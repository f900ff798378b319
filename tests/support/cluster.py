"""Several ``algomint serve`` replicas on one metadata store, behind a load balancer.

The balancer is HAProxy when installed (``apt-get install haproxy``), else Debian's
nginx: round robin per request, health-checked on ``/readyz`` (HAProxy), so a killed
replica drops out and its requests go to the others. Replicas share one docker-registry
(the registry backend is the multi-replica backend) and the metadata store named by
``store`` (a SQLite file in WAL mode that every process opens, or a PostgreSQL URL)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .distribution import Distribution, free_port
from .server import Server, start_server

__all__ = ["Cluster", "run_cluster", "BALANCER"]

HAPROXY = shutil.which("haproxy")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
BALANCER = "haproxy" if HAPROXY else "nginx" if NGINX else None
ADMIN_PASSWORD = "cluster-admin-password-1"


@dataclass
class Cluster:
    root: Path
    url: str  # the balancer
    replicas: list[Server]
    configs: list[str]
    store: str  # SQLite path or postgresql:// URL
    balancer: subprocess.Popen
    ids: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def index_of(self, replica_id: str) -> int:
        return self.ids.index(replica_id)

    def kill(self, i: int) -> None:
        """SIGKILL: no shutdown, no lease handed back, pending writes lost."""
        self.replicas[i].process.send_signal(signal.SIGKILL)
        self.replicas[i].process.wait(10)

    def restart(self, i: int) -> None:
        if self.replicas[i].process.poll() is None:
            self.kill(i)
        workdir = self.root / self.ids[i]
        self.replicas[i] = start_server(workdir, self.configs[i], env=_env(self.store), port=_port_of(self.replicas[i]))

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the shared metadata store directly (what the replicas agree on)."""
        if self.store.startswith("postgresql://"):
            return _pg_query(self.store, sql, params)
        with contextlib.closing(sqlite3.connect(self.store, timeout=10)) as conn:
            return conn.execute(sql, params).fetchall()


def _env(store: str) -> dict[str, str]:
    env = {"ALGOMINT_ADMIN_PASSWORD": ADMIN_PASSWORD}
    if store.startswith("postgresql://"):
        env["ALGOMINT_METADATA__URL"] = store  # wins over any per-test database the harness names
    return env


def _port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _pg_query(url: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    import asyncio

    import asyncpg

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            text, n = sql, 0
            while "?" in text:
                n += 1
                text = text.replace("?", f"${n}", 1)
            return [tuple(r) for r in await conn.fetch(text, *params)]
        finally:
            await conn.close()

    return asyncio.run(run())


def _replica_config(root: Path, rid: str, store: str, dist: Distribution, public_url: str, extra: str) -> str:
    metadata = f'url = "{store}"' if store.startswith("postgresql://") else f'path = "{store}"'
    return f"""
[server]
replica_id = "{rid}"
public_url = "{public_url}"
shutdown_grace = 1
[storage]
backend = "registry"
url = "{dist.url}"
[metadata]
{metadata}
[auth]
enabled = true
signing_keys_dir = "{root / 'auth-keys'}"
cache_ttl = 30
[cluster]
lease = "4s"
heartbeat = "0.5s"
poll_interval = "0.25s"
[assembly]
poll_interval = 0.3
workdir = "{root / rid / 'work'}"
[webhooks]
allow = ["http://127.0.0.1:*/"]
poll_interval = 0.2
backoff = 0.2
max_backoff = 0.5
max_attempts = 50
timeout = 20
{extra}
"""


def _haproxy_config(port: int, backends: list[int]) -> str:
    servers = "\n".join(f"  server r{i} 127.0.0.1:{p} check" for i, p in enumerate(backends))
    return f"""
global
  maxconn 512
defaults
  mode http
  timeout connect 2s
  timeout client 120s
  timeout server 120s
  option redispatch
  retries 3
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  balance roundrobin
  option httpchk GET /readyz
  default-server inter 250ms fall 2 rise 2
{servers}
"""


def _nginx_config(root: Path, port: int, backends: list[int]) -> str:
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in backends)
    return f"""
daemon off;
pid {root / 'nginx.pid'};
error_log {root / 'nginx-error.log'};
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {root / 'nginx-body'};
  proxy_temp_path {root / 'nginx-proxy'};
  client_max_body_size 0;
  upstream algomint {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://algomint;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_next_upstream error timeout;
      proxy_read_timeout 120s;
    }}
  }}
}}
"""


def _start_balancer(root: Path, port: int, backends: list[int]) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "balancer.log", "wb")
    if BALANCER == "haproxy":
        config = root / "haproxy.cfg"
        config.write_text(_haproxy_config(port, backends))
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=log)
    elif BALANCER == "nginx":
        config = root / "nginx.conf"
        config.write_text(_nginx_config(root, port, backends))
        proc = subprocess.Popen([NGINX, "-c", str(config), "-p", str(root)], stdout=log, stderr=log)
    else:
        raise RuntimeError("no load balancer: apt-get install haproxy (or nginx)")
    log.close()
    deadline = time.monotonic() + 15
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{BALANCER} did not start: {(root / 'balancer.log').read_text()}")
            time.sleep(0.05)


@contextlib.contextmanager
def run_cluster(root: Path, dist: Distribution, store: str, replicas: int = 3, extra: str = "") -> Iterator[Cluster]:
    """``replicas`` algomint processes on ``store`` behind a balancer; the first replica
    starts alone (it creates the signing key and the first admin), the others after it."""
    root.mkdir(parents=True, exist_ok=True)
    lb_port = free_port()
    public_url = f"http://127.0.0.1:{lb_port}"
    ids = [f"r{i}" for i in range(replicas)]
    configs = [_replica_config(root, rid, store, dist, public_url, extra) for rid in ids]
    servers: list[Server] = []
    balancer = None
    try:
        for rid, config in zip(ids, configs):
            servers.append(start_server(root / rid, config, env=_env(store)))
        balancer = _start_balancer(root / "lb", lb_port, [_port_of(s) for s in servers])
        yield Cluster(root, public_url, servers, configs, store, balancer, ids)
    finally:
        if balancer is not None:
            balancer.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                balancer.wait(5)
            if balancer.poll() is None:
                balancer.kill()
        for server in servers:
            if server.process.poll() is None:
                server.process.terminate()
        for server in servers:
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                server.process.kill()
