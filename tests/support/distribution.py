"""Start Debian's ``docker-registry`` (CNCF distribution 2.8) on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["Distribution", "free_port", "run_distribution"]

BINARY = shutil.which("docker-registry") or shutil.which("registry")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Distribution:
    url: str
    root: Path
    process: subprocess.Popen

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]


def _config(root: Path, port: int, htpasswd: Path | None, token_bundle: Path | None = None) -> str:
    auth = (
        f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {htpasswd}\n" if htpasswd else ""
    )
    if token_bundle is not None:  # token auth trusting algomint's signing certificates
        auth = ("auth:\n  token:\n    realm: http://127.0.0.1/token\n    service: algomint\n"
                f"    issuer: algomint\n    rootcertbundle: {token_bundle}\n")
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        # Distribution refuses non-distributable layers' URLs unless an allow list names them.
        "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: algomint-test-secret\n"
        + auth
    )


@contextlib.contextmanager
def run_distribution(workdir: Path, htpasswd: Path | None = None,
                     token_bundle: Path | None = None) -> Iterator[Distribution]:
    """Run docker-registry with storage under ``workdir`` until the context exits."""
    if BINARY is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(_config(workdir / "storage", port, htpasswd, token_bundle))
    log = open(workdir / "registry.log", "wb")
    proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=log, stderr=log, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(url + "/v2/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # 401 with auth enabled: it is up
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry did not start: {(workdir / 'registry.log').read_text()}")
                time.sleep(0.05)
        yield Distribution(url, workdir / "storage", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
