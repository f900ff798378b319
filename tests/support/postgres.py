"""A throwaway PostgreSQL cluster (initdb in a temp dir, loopback port and unix socket) and
fresh databases in it, for tests that run the metadata store on PostgreSQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.support.distribution import free_port

__all__ = ["PostgresServer", "pg_binary", "run_postgres"]

USER = "algomint"


def pg_binary(name: str) -> str | None:
    """``initdb``/``pg_ctl`` on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def _run_sync(coro) -> object:
    # make_config may be called from inside a running event loop: use a loop of our own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class PostgresServer:
    root: Path
    port: int
    socket_dir: Path
    run_as: list[str]
    created: list[str] = field(default_factory=list)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@/{database}?host={self.socket_dir}&port={self.port}"

    async def _admin(self, *statements: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url())
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        _run_sync(self._admin(f"CREATE DATABASE {name}"))
        self.created.append(name)
        return self.url(name)

    def drop_created(self) -> None:
        names, self.created = self.created, []
        if names:
            _run_sync(self._admin(*(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)" for n in names)))

    def _ctl(self, *args: str) -> None:
        ctl = pg_binary("pg_ctl")
        assert ctl, "pg_ctl not found"
        subprocess.run([*self.run_as, ctl, "-D", str(self.root / "data"), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        self._ctl("-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    initdb = pg_binary("initdb")
    assert initdb, "initdb not found (Debian: apt-get install postgresql)"
    # initdb refuses root: the cluster belongs to the postgres account then, in a directory
    # it can reach (pytest's own temp dirs are root-only).
    root = Path(tempfile.mkdtemp(prefix="algomint-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres" if _has_user("postgres") else "nobody")
        os.chmod(root, 0o755)
        os.chown(root, account.pw_uid, account.pw_gid)
        run_as = ["runuser", "-u", account.pw_name, "--"]
    socket_dir = root / "sock"
    subprocess.run([*run_as, "mkdir", "-p", str(socket_dir)], check=True)
    subprocess.run([*run_as, initdb, "-D", str(root / "data"), "-U", USER, "--auth=trust", "-E", "UTF8",
                    "--no-sync", "--locale=C.UTF-8"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    server = PostgresServer(root, free_port(), socket_dir, run_as)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
