"""``algomint serve`` speaking https itself: a CA made here with ``cryptography``, real
clients verifying the certificate (aiohttp, curl, skopeo, podman), a login with auth on,
the token realm on https, and a certificate renewed on SIGHUP without dropping the
listener or the connections already open."""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import signal
import ssl
import time
import uuid
from pathlib import Path
from typing import Iterator

import aiohttp
import pytest

from proxy.config import ConfigError, load_config
from tests.support.auth import ADMIN, ADMIN_PASSWORD, basic
from tests.support.images import write_oci_layout
from tests.support.podman import PODMAN, Podman
from tests.support.server import Server, run_server
from tests.support.tlsca import TrustedCA, make_ca

SKOPEO = shutil.which("skopeo")
CURL = shutil.which("curl")


@pytest.fixture
def ca(tmp_path: Path) -> TrustedCA:
    return make_ca(tmp_path / "certs")


@pytest.fixture
def tls_server(tmp_path: Path, ca: TrustedCA) -> Iterator[tuple[Server, TrustedCA, Path, Path]]:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    ca.issue(cert, key, "first")
    secret = tmp_path / "admin-password"
    secret.write_text(ADMIN_PASSWORD + "\n")
    config = (
        f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        f'[storage]\npath = "{tmp_path / "storage"}"\n[metadata]\npath = "{tmp_path / "metadata.db"}"\n'
        f'[auth]\nenabled = true\nadmin_password_file = "{secret}"\n'
    )
    with run_server(tmp_path / "srv", config, ca=ca.cert_path) as server:
        yield server, ca, cert, key


def _context(ca: TrustedCA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert_path))


async def test_https_with_a_verified_certificate_and_an_https_realm(tls_server) -> None:
    server, ca, _, _ = tls_server
    assert server.url.startswith("https://")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_context(ca))) as session:
        async with session.get(server.url + "/v2/") as resp:
            assert resp.status == 401
            # The token realm follows the scheme the client came in on.
            assert f'realm="{server.url}/token"' in resp.headers["WWW-Authenticate"]
        async with session.get(server.url + "/token", params={"service": "algomint"}, headers=basic(ADMIN)) as resp:
            assert resp.status == 200
            token = (await resp.json())["token"]
        async with session.get(server.url + "/v2/", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
    # A client that does not trust the CA is refused by its own TLS check.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(server.url + "/healthz")


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_over_https(tls_server) -> None:
    server, ca, _, _ = tls_server
    proc = await asyncio.create_subprocess_exec(
        CURL, "-sS", "--cacert", str(ca.cert_path), "-o", "/dev/null", "-w", "%{http_code} %{scheme}",
        server.url + "/healthz", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out.decode().lower() == "200 https"


def _common_name(conn: http.client.HTTPSConnection) -> str:
    subject = dict(item[0] for item in conn.sock.getpeercert()["subject"])  # type: ignore[union-attr]
    return subject["commonName"]


def _healthz(conn: http.client.HTTPSConnection) -> int:
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    resp.read()
    return resp.status


def test_sighup_renews_the_certificate_without_dropping_connections(tls_server) -> None:
    server, ca, cert, key = tls_server
    host, port = server.host.rsplit(":", 1)

    def connect() -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(host, int(port), context=_context(ca), timeout=10)
        conn.connect()
        return conn

    kept = connect()
    assert _healthz(kept) == 200 and _common_name(kept) == "first"
    # A half-written pair is refused and the certificate in use kept.
    cert.write_text("not a certificate")
    server.process.send_signal(signal.SIGHUP)
    for _ in range(50):
        if "TLS reload failed" in server.logs():
            break
        time.sleep(0.1)
    assert "TLS reload failed" in server.logs()
    fresh = connect()
    assert _healthz(fresh) == 200 and _common_name(fresh) == "first"
    fresh.close()
    ca.issue(cert, key, "renewed")
    server.process.send_signal(signal.SIGHUP)
    for _ in range(50):
        fresh = connect()
        renewed = _common_name(fresh) == "renewed"
        fresh.close()
        if renewed:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the renewed certificate was never served")
    # The connection opened before the renewal still answers, on its certificate.
    assert _healthz(kept) == 200 and _common_name(kept) == "first"
    kept.close()
    assert server.process.poll() is None


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, (out + err).decode()


@pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")
async def test_skopeo_login_push_and_pull_over_verified_https(tls_server, tmp_path: Path) -> None:
    server, ca, _, _ = tls_server
    host, certs = server.host, str(ca.cert_path.parent)
    src = tmp_path / "src"
    write_oci_layout(src, "v1", [{"opt/model.bin": os.urandom(200_000)}])
    authfile = str(tmp_path / "auth.json")
    code, out = await _run(SKOPEO, "login", "--cert-dir", certs, "--tls-verify=true", "--authfile", authfile,
                           "-u", ADMIN, "-p", ADMIN_PASSWORD, host)
    assert code == 0, out
    image = f"generic/tls-{uuid.uuid4().hex[:8]}"
    code, out = await _run(SKOPEO, "copy", "--dest-cert-dir", certs, "--dest-tls-verify=true",
                           "--authfile", authfile, f"oci:{src}:v1", f"docker://{host}/{image}:v1")
    assert code == 0, out
    code, out = await _run(SKOPEO, "copy", "--src-cert-dir", certs, "--src-tls-verify=true",
                           "--authfile", authfile, f"docker://{host}/{image}:v1", f"oci:{tmp_path / 'back'}:v1")
    assert code == 0, out
    # Without the CA the same pull is refused by skopeo's certificate check.
    code, out = await _run(SKOPEO, "inspect", "--tls-verify=true", "--authfile", authfile, f"docker://{host}/{image}:v1")
    assert code != 0 and "certificate" in out.lower(), out


@pytest.mark.skipif(PODMAN is None, reason="podman is not installed")
async def test_podman_login_and_pull_over_verified_https(tls_server, tmp_path: Path) -> None:
    server, ca, _, _ = tls_server
    host, certs = server.host, str(ca.cert_path.parent)
    src = tmp_path / "src"
    write_oci_layout(src, "v1", [{"README": b"over https"}])
    image = f"generic/tlspod-{uuid.uuid4().hex[:8]}"
    code, out = await _run(SKOPEO or "skopeo", "copy", "--dest-cert-dir", certs, "--dest-creds",
                           f"{ADMIN}:{ADMIN_PASSWORD}", f"oci:{src}:v1", f"docker://{host}/{image}:v1")
    assert code == 0, out
    authfile = tmp_path / "auth.json"
    authfile.write_text('{"auths": {}}')
    podman = Podman(tmp_path / "podman")
    try:
        code, out = await podman("login", "--cert-dir", certs, "--tls-verify=true", "--authfile", str(authfile),
                                 "-u", ADMIN, "-p", ADMIN_PASSWORD, host)
        assert code == 0 and "Login Succeeded" in out, out
        code, out = await podman("pull", "--cert-dir", certs, "--tls-verify=true", "--authfile", str(authfile),
                                 f"{host}/{image}:v1")
        assert code == 0, out
    finally:
        podman.close()


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_key"):
        load_config(None, environ={"ALGOMINT_SERVER__TLS_CERT": str(tmp_path / "c.pem")})
    with pytest.raises(ConfigError, match="https"):
        load_config(None, environ={"ALGOMINT_SERVER__TLS_CERT": "c", "ALGOMINT_SERVER__TLS_KEY": "k",
                                   "ALGOMINT_SERVER__PUBLIC_URL": "http://registry.example"})
