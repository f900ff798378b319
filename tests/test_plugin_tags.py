"""Plugin tags are immutable once pushed (DESIGN §7): other content under a pushed tag is
``DENIED`` and a new version needs a new tag, the same bytes again are fine, and plugin
manifests and blobs are never deleted through the registry API. Both backends; the
management API, raw /v2 calls, concurrent pushes, and a real client (oras)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import types
import uuid
from pathlib import Path

import oras.provider  # noqa: F401 - loads oras.decorator, which alone imports in a circle
import pytest

from proxy.oci import mediatypes as mt
from tests.support.oci import digest_of, error_code, push_blob
from tests.support.packer import oras_push, push_plugin


async def _raw_plugin(client, repo: str, tag: str, marker: str):
    """A file plugin pushed with plain registry calls; returns the response."""
    config = json.dumps({"name": repo.rsplit("/", 1)[1], "version": tag, "kind": "file", "x": marker}).encode()
    data = marker.encode()
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.PLUGIN,
                "config": {"mediaType": mt.PLUGIN_CONFIG, "size": len(config),
                           "digest": await push_blob(client, repo, config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": len(data),
                            "digest": await push_blob(client, repo, data),
                            "annotations": {mt.ANNOTATION_TITLE: "params.json"}}]}
    body = json.dumps(manifest).encode()
    return await client.put(f"/v2/{repo}/manifests/{tag}", data=body, headers={"Content-Type": mt.OCI_MANIFEST})


async def _tag_digest(client, repo: str, tag: str) -> str:
    resp = await client.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": mt.OCI_MANIFEST})
    assert resp.status == 200
    return resp.headers["Docker-Content-Digest"]


async def test_a_pushed_plugin_version_keeps_its_content(client):
    name = f"door-params-{uuid.uuid4().hex[:8]}"
    first = await push_plugin(client, name, "1.0", "file", {}, {"params.json": b'{"door": 1}'})
    # the same content again: idempotent
    assert await push_plugin(client, name, "1.0", "file", {}, {"params.json": b'{"door": 1}'}) == first
    # other content under the same version: refused, and the tag still names the first
    resp = await client.post("/api/v1/plugins", json={
        "name": name, "version": "1.0", "kind": "file", "options": {},
        "files": [{"path": "params.json", "data": "eyJkb29yIjogMn0="}]})
    assert resp.status == 403, await resp.text()
    error = (await resp.json())["error"]
    assert "immutable" in error["message"] and "new tag" in error["message"]
    assert await _tag_digest(client, f"plugins/{name}", "1.0") == first
    # the new-version path: a new tag
    second = await push_plugin(client, name, "1.1", "file", {}, {"params.json": b'{"door": 2}'})
    assert second != first and await _tag_digest(client, f"plugins/{name}", "1.1") == second


async def test_registry_api_refuses_overwrites_and_deletes_of_plugins(client):
    repo = f"plugins/raw-{uuid.uuid4().hex[:8]}"
    resp = await _raw_plugin(client, repo, "1.0", "a")
    assert resp.status == 201
    digest = resp.headers["Docker-Content-Digest"]
    assert (await _raw_plugin(client, repo, "1.0", "a")).status == 201  # same bytes
    resp = await _raw_plugin(client, repo, "1.0", "b")
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    assert digest in (await resp.text())
    assert await _tag_digest(client, repo, "1.0") == digest

    for path in (f"/v2/{repo}/manifests/1.0", f"/v2/{repo}/manifests/{digest}", f"/v2/{repo}/blobs/{digest_of(b'a')}"):
        resp = await client.delete(path)
        assert resp.status == 403, path
        assert await error_code(resp) == "DENIED"
    assert await _tag_digest(client, repo, "1.0") == digest
    assert (await client.get(f"/v2/{repo}/blobs/{digest_of(b'a')}")).status == 200

    # Cancelling an upload session in a plugin repository is no delete of content.
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert (await client.delete(resp.headers["Location"])).status == 204
    # Elsewhere tags move as before.
    other = f"generic/mutable-{uuid.uuid4().hex[:8]}"
    assert (await _raw_plugin(client, other, "1.0", "a")).status == 201
    assert (await _raw_plugin(client, other, "1.0", "b")).status == 201


async def test_concurrent_pushes_of_different_content_to_a_new_tag_have_one_winner(client):
    repo = f"plugins/race-{uuid.uuid4().hex[:8]}"
    statuses = [r.status for r in await asyncio.gather(*(_raw_plugin(client, repo, "1.0", f"m{i}")
                                                         for i in range(8)))]
    assert sorted(statuses) == [201] + [403] * 7


@pytest.mark.sqlite_only
async def test_tags_pushed_before_the_rule_are_protected_too(client, config):
    repo = f"plugins/old-{uuid.uuid4().hex[:8]}"
    resp = await _raw_plugin(client, repo, "1.0", "a")
    digest = resp.headers["Docker-Content-Digest"]
    # As if the tag had been pushed by a version without the rule: no claim recorded.
    conn = sqlite3.connect(config.metadata.path)
    conn.execute("DELETE FROM immutable_tags WHERE repository = ?", (repo,))
    conn.commit()
    conn.close()
    resp = await _raw_plugin(client, repo, "1.0", "b")
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    assert await _tag_digest(client, repo, "1.0") == digest


async def test_oras_cannot_overwrite_a_plugin_version(client, tmp_path: Path, monkeypatch):
    # oras-py retries a refused request five times with sleeps of 3 to 83 s: skip the waits.
    monkeypatch.setattr("oras.decorator.time", types.SimpleNamespace(sleep=lambda seconds: None))
    host = f"127.0.0.1:{client.server.port}"
    repo = f"plugins/oras-{uuid.uuid4().hex[:8]}"
    descriptor = {"name": repo.rsplit("/", 1)[1], "version": "1.0", "kind": "file"}
    first = await asyncio.to_thread(oras_push, host, repo, "1.0", descriptor, {"params.json": b"1"}, tmp_path / "a")
    # oras-py reads any 403 as an authentication problem; the /v2 test above checks the body.
    with pytest.raises(ValueError):
        await asyncio.to_thread(oras_push, host, repo, "1.0", descriptor, {"params.json": b"2"}, tmp_path / "b")
    assert await _tag_digest(client, repo, "1.0") == first
    second = await asyncio.to_thread(oras_push, host, repo, "1.1", descriptor, {"params.json": b"2"}, tmp_path / "c")
    assert await _tag_digest(client, repo, "1.1") == second != first
