"""Helpers for assembly tests: push generic packages with oras, plugins, wait for jobs."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from proxy.oci import mediatypes as mt

DESCRIPTOR = {
    "name": "face-recog",
    "version": "1.0",
    "platform": "linux/amd64+cuda12",
    "inputs": [{"name": "image", "type": "image/jpeg", "description": "a face"}],
    "outputs": [{"name": "identity", "type": "string", "description": "who"}],
    "parameters": {"threshold": 0.5},
    "runtime": {"images": [{"ref": "images/face-recog:v1", "models": ["opt/models/*.onnx"]}]},
    "x-vendor": {"kept": True},
}


def oras_push(host: str, repo: str, tag: str, descriptor: dict[str, Any], files: dict[str, bytes], workdir: Path,
              annotations: dict[str, str] | None = None) -> str:
    """Push a generic thin package with the oras SDK (synchronous); returns the manifest digest."""
    import oras.provider

    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "descriptor.json"
    config.write_text(json.dumps(descriptor))
    paths, titles = [], {}
    for i, (name, data) in enumerate(files.items()):
        path = workdir / f"f{i}-{Path(name).name}"
        path.write_bytes(data)
        paths.append(str(path))
        titles[str(path)] = {mt.ANNOTATION_TITLE: name}
    annotation_file = workdir / "annotations.json"
    annotation_file.write_text(json.dumps(titles))
    registry = oras.provider.Registry(host, insecure=True)
    resp = registry.push(
        target=f"{host}/{repo}:{tag}", files=paths, manifest_config=f"{config}:{mt.ALGORITHM_CONFIG}",
        annotation_file=str(annotation_file), manifest_annotations=annotations, disable_path_validation=True,
        quiet=True,
    )
    return resp.headers["Docker-Content-Digest"]


async def push_generic(client, repo: str, tag: str, files: dict[str, bytes], workdir: Path,
                       descriptor: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> str:
    host = f"127.0.0.1:{client.server.port}"
    return await asyncio.to_thread(oras_push, host, repo, tag, descriptor or DESCRIPTOR, files, workdir, annotations)


async def push_plugin(client, name: str, version: str, kind: str, options: dict[str, Any] | None = None,
                      files: dict[str, bytes] | None = None) -> str:
    body = {
        "name": name, "version": version, "kind": kind, "options": options or {},
        "files": [{"path": p, "data": base64.b64encode(d).decode()} for p, d in (files or {}).items()],
    }
    resp = await client.post("/api/v1/plugins", json=body)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["digest"]


async def create_chain(client, name: str, match: list[str], plugins: list[str], params: dict | None = None) -> dict:
    resp = await client.post("/api/v1/chains", json={"name": name, "match": match, "plugins": plugins,
                                                      "params": params or {}})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


async def jobs(client, **query: Any) -> list[dict]:
    resp = await client.get("/api/v1/assemblies", params={k: str(v) for k, v in query.items()})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["items"]


async def wait_jobs_done(client, count: int = 1, timeout: float = 20.0, **query: Any) -> list[dict]:
    """Wait until at least ``count`` matching jobs exist and none of them is queued or running."""

    async def done() -> list[dict] | None:
        items = await jobs(client, **query)
        if len(items) >= count and all(j["status"] in ("succeeded", "failed", "skipped") for j in items):
            return items
        return None

    return await wait_for(done, timeout)


async def manifest(client, repo: str, ref: str) -> tuple[str, dict]:
    resp = await client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": mt.OCI_MANIFEST})
    assert resp.status == 200, await resp.text()
    return resp.headers["Docker-Content-Digest"], json.loads(await resp.read())


async def blob(client, repo: str, digest: str) -> bytes:
    resp = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def files_of(client, repo: str, ref: str) -> dict[str, bytes]:
    _, doc = await manifest(client, repo, ref)
    return {layer["annotations"][mt.ANNOTATION_TITLE]: await blob(client, repo, layer["digest"]) for layer in doc["layers"]}
