"""``algomint serve`` as a real process: chains file reloaded on SIGHUP, and a job that
survives ``kill -9`` mid-run — re-run from the start once its lease expires, by the
restarted process, with its webhook."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support.packer import oras_push
from tests.support.server import start_server

TOKEN = f"algomint-slow-job-{uuid.uuid4().hex[:8]}"
SLOW_JOB = (f"# {TOKEN}\nimport time, pathlib\ntime.sleep(2.5)\n"
            "pathlib.Path('files/slow.txt').write_text('finished')\n")


def _config(workdir: Path) -> str:
    return f"""
[server]
shutdown_grace = 1
[cluster]
lease = "2s"
heartbeat = "0.5s"
[storage]
path = "{workdir / 'storage'}"
[metadata]
path = "{workdir / 'metadata.db'}"
[assembly]
poll_interval = 0.5
[chains]
file = "{workdir / 'chains.toml'}"
[webhooks]
allow = ["http://127.0.0.1:*/"]
poll_interval = 0.1
backoff = 0.1
max_backoff = 0.5
max_attempts = 100
"""


def _running_with_token() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if TOKEN.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def _poll(check, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        await asyncio.sleep(interval)


async def test_job_interrupted_by_kill_9_completes_after_restart(tmp_path, aiohttp_server):
    workdir = tmp_path / "srv"
    workdir.mkdir()
    (workdir / "chains.toml").write_text("# no chains yet\n")
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response()

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(receiver_app)

    server = await asyncio.to_thread(start_server, workdir, _config(workdir))
    try:
        async with aiohttp.ClientSession(server.url) as http:
            resp = await http.post("/api/v1/plugins", json={
                "name": "slow", "version": "1.0", "kind": "job",
                "options": {"command": [sys.executable, "-c", SLOW_JOB]},
            })
            assert resp.status == 201, await resp.text()
            resp = await http.post("/api/v1/subscriptions", json={
                "url": str(receiver.make_url("/hook")), "events": ["business.assembled"], "repositories": ["business/**"]})
            assert resp.status == 201

            # The chains file is re-read on SIGHUP.
            (workdir / "chains.toml").write_text(
                '[[chain]]\nname = "door"\nmatch = ["generic/*"]\nplugins = ["plugins/slow:1.0"]\n')
            server.process.send_signal(signal.SIGHUP)

            async def chain_loaded():
                body = await (await http.get("/api/v1/chains")).json()
                return [c["name"] for c in body["items"]] == ["door"]

            await _poll(chain_loaded)

            source = await asyncio.to_thread(oras_push, server.host, "generic/face-recog", "1.0",
                                             {"name": "face-recog", "version": "1.0"}, {"model.onnx": b"m"},
                                             tmp_path / "push")

            async def running():
                items = (await (await http.get("/api/v1/assemblies")).json())["items"]
                return items and items[0]["status"] == "running" and _running_with_token()

            await _poll(running)
        server.process.kill()  # kill -9 in the middle of the job
        server.process.wait(10)
        # The job's process dies with the service (parent-death signal), leaving nothing behind.
        await _poll(lambda: asyncio.sleep(0, result=not _running_with_token()), timeout=5)
    finally:
        if server.process.poll() is None:
            server.process.kill()

    server = await asyncio.to_thread(start_server, workdir, _config(workdir))
    try:
        async with aiohttp.ClientSession(server.url) as http:
            async def finished():
                items = (await (await http.get("/api/v1/assemblies")).json())["items"]
                return items if items and items[0]["status"] in ("succeeded", "failed") else None

            [job] = await _poll(finished)
            assert job["status"] == "succeeded", job
            assert job["runs"] == 2 and job["source"]["digest"] == source
            detail = await (await http.get(f"/api/v1/assemblies/{job['id']}")).json()
            assert "stopped renewing its lease" in detail["logs"]  # taken over from the killed process

            resp = await http.get("/v2/business/door/face-recog/manifests/1.0",
                                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            doc = json.loads(await resp.read())
            assert doc["subject"]["digest"] == source
            [layer] = [entry for entry in doc["layers"] if entry["annotations"]["org.opencontainers.image.title"] == "slow.txt"]
            blob = await http.get(f"/v2/business/door/face-recog/blobs/{layer['digest']}")
            assert await blob.read() == b"finished"
            await _poll(lambda: asyncio.sleep(0, result=len(received) == 1))
            assert received[0]["data"]["digest"] == job["target"]["digest"]
            assert list((workdir / "work").iterdir()) == []  # work directories are removed
    finally:
        server.process.terminate()
        server.process.wait(15)
