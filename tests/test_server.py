"""The ``algomint serve`` process: config errors, logs, operations endpoints, SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request

import aiohttp
import pytest

from tests.support.distribution import free_port
from tests.support.oci import digest_of
from tests.support.server import run_server


def _serve(config_path, *extra: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path), *extra],
        capture_output=True, text=True, timeout=20, env=env,
    )


@pytest.mark.parametrize(
    "text,names",
    [
        ('[storage]\nbackend = "s3"\n', "storage.backend"),
        ('[server]\nlisten = "nowhere"\n', "server.listen"),
        ('[storage]\nbackend = "registry"\n', "storage.url"),
        ('[serverr]\nlisten = "127.0.0.1:1"\n', "serverr"),
        ("[server\n", "invalid TOML"),
        ('[assembly]\nbusiness_prefix = "biz/"\n', "auth.system_namespaces must cover assembly.business_prefix"),
        ('[storage]\nverify_reads = "never"\n', "storage.verify_reads"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, names):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = _serve(path)
    assert result.returncode == 2
    assert names in result.stderr


def test_environment_overrides_file(tmp_path):
    from proxy.config import load_config

    path = tmp_path / "c.toml"
    path.write_text('[storage]\nbackend = "filesystem"\n[server]\nlisten = "127.0.0.1:6000"\n')
    config = load_config(path, environ={"ALGOMINT_SERVER__LISTEN": "127.0.0.1:7000", "ALGOMINT_STORAGE__INSECURE": "true"})
    assert config.server.listen == "127.0.0.1:7000"
    assert config.storage.insecure is True


def test_password_never_printed(tmp_path):
    from proxy.config import load_config

    config = load_config(None, environ={"ALGOMINT_STORAGE__BACKEND": "registry", "ALGOMINT_STORAGE__URL": "http://x",
                                        "ALGOMINT_STORAGE__PASSWORD": "hunter2"})
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())


def test_ops_endpoints_and_json_logs(tmp_path):
    with run_server(tmp_path / "srv") as server:
        health = json.loads(urllib.request.urlopen(server.url + "/healthz").read())
        ready = json.loads(urllib.request.urlopen(server.url + "/readyz").read())
        urllib.request.urlopen(server.url + "/v2/")
        metrics = urllib.request.urlopen(server.url + "/metrics").read().decode()
        assert health["status"] == "ok"
        assert ready["checks"] == {"backend": "ok", "metadata": "ok", "sandbox": "ok"}
        assert 'algomint_http_requests_total{method="GET",route="v2.base",status="200"}' in metrics
        for name in ("algomint_http_sent_bytes_total", "algomint_streams_in_flight", "algomint_backend_errors_total",
                     "algomint_http_request_duration_seconds_bucket"):
            assert name in metrics
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    requests = [entry for entry in lines if entry["msg"] == "request"]
    assert requests and all(entry["request_id"] for entry in requests)
    assert {"method", "path", "status", "duration_ms"} <= set(requests[0])


def test_readyz_reports_backend_down(tmp_path):
    port = free_port()  # nothing listens here
    config = (
        f'[storage]\nbackend = "registry"\nurl = "http://127.0.0.1:{port}"\n'
        f'[metadata]\npath = "{tmp_path / "m.db"}"\n'
    )
    with run_server(tmp_path / "srv", config) as server:
        try:
            urllib.request.urlopen(server.url + "/readyz")
            raise AssertionError("readyz should fail")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            assert json.loads(exc.read())["checks"]["metadata"] == "ok"
        try:
            urllib.request.urlopen(server.url + "/v2/x/manifests/v1")
            raise AssertionError("manifest GET should fail")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            assert json.loads(exc.read())["errors"][0]["code"] == "UNAVAILABLE"


async def test_sigterm_drains_in_flight_upload(tmp_path):
    """A slow upload in flight when SIGTERM arrives still completes; then the process exits 0."""
    data = b"x" * (4 * 1024 * 1024)
    with run_server(tmp_path / "srv") as server:
        async with aiohttp.ClientSession() as session:
            started = asyncio.Event()

            async def slow_body():
                for i in range(0, len(data), 512 * 1024):
                    yield data[i : i + 512 * 1024]
                    started.set()
                    await asyncio.sleep(0.25)

            upload = asyncio.create_task(
                session.post(f"{server.url}/v2/drain/test/blobs/uploads/", params={"digest": digest_of(data)}, data=slow_body())
            )
            await started.wait()
            # SIGTERM drains requests being handled: wait until the upload is one of them
            # (in flight: the upload plus the /metrics request asking).
            for _ in range(200):
                async with session.get(f"{server.url}/metrics") as resp:
                    text = await resp.text()
                if "algomint_http_requests_in_flight 2.0" in text:
                    break
                await asyncio.sleep(0.02)
            assert not upload.done(), "the upload must still be in flight when SIGTERM arrives"
            server.process.send_signal(signal.SIGTERM)
            resp = await upload
            assert resp.status == 201
        assert await asyncio.to_thread(server.process.wait, 15) == 0
    assert "shutting down" in server.logs()
