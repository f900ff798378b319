"""Run ``algomint serve`` as a real process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .distribution import free_port

__all__ = ["Server", "run_server", "start_server"]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    workdir: Path, config_text: str | None = "", env: dict[str, str] | None = None, timeout: float = 20,
    ca: Path | None = None, port: int | None = None,
) -> Server:
    """``config_text`` None: no config file at all (defaults, relative to ``workdir``).
    ``ca``: the server speaks https with a certificate this CA file vouches for.
    ``port``: listen there (a restarted replica keeps its place behind a balancer)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config_args: list[str] = []
    if config_text is not None:
        config = workdir / "algomint.toml"
        config.write_text(
            config_text
            or f'[storage]\npath = "{workdir / "storage"}"\n[metadata]\npath = "{workdir / "metadata.db"}"\n'
        )
        config_args = ["--config", str(config)]
    from tests.conftest import metadata_url

    # On the PostgreSQL run the server's metadata goes to the test's database instead.
    if (url := metadata_url(workdir / "metadata.db")) is not None:
        env = {"ALGOMINT_METADATA__URL": url, **(env or {})}
    log_path = workdir / "server.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve", *config_args, "--listen", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=log,
        env={**os.environ, **(env or {})},
        cwd=workdir,
    )
    log.close()
    url = f"{'https' if ca else 'http'}://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1, context=context)
            return Server(url, proc, log_path)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"algomint did not start:\n{log_path.read_text()}")
            time.sleep(0.05)


@contextlib.contextmanager
def run_server(
    workdir: Path, config_text: str | None = "", env: dict[str, str] | None = None, ca: Path | None = None
) -> Iterator[Server]:
    server = start_server(workdir, config_text, env, ca=ca)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                server.process.kill()
