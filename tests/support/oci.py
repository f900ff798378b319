"""Small builders for OCI content used across tests."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp.test_utils import TestClient

from proxy.oci import mediatypes as mt

EMPTY_CONFIG = b"{}"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def image_manifest(config: bytes, layers: list[bytes], **extra: Any) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": descriptor(config, mt.OCI_CONFIG),
        "layers": [descriptor(layer, mt.OCI_LAYER_GZIP) for layer in layers],
        **extra,
    }
    return json.dumps(doc, indent=1).encode()


async def push_blob(client: TestClient, repo: str, data: bytes, headers: dict[str, str] | None = None) -> str:
    digest = digest_of(data)
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, data=data, headers=headers)
    assert resp.status == 201, await resp.text()
    return digest


async def push_image(client: TestClient, repo: str, tag: str, layers: list[bytes], config: bytes = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}', **extra: Any) -> tuple[str, bytes]:
    for blob in [config, *layers]:
        await push_blob(client, repo, blob)
    manifest = image_manifest(config, layers, **extra)
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"], manifest


async def error_code(resp) -> str:
    body = await resp.json(content_type=None)
    return body["errors"][0]["code"]
