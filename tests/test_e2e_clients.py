"""Real clients end to end through algomint on both backends: skopeo, podman and the oras SDK."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.images import write_oci_layout
from tests.support.podman import PODMAN, Podman

SKOPEO = shutil.which("skopeo")
TLS = "--tls-verify=false"


async def run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"{argv} failed: {err.decode()}"
    return out.decode()


def _layout_digests(root: Path) -> tuple[str, list[str]]:
    index = json.loads((root / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads((root / "blobs" / "sha256" / manifest_digest.split(":")[1]).read_bytes())
    return manifest_digest, [layer["digest"] for layer in manifest["layers"]] + [manifest["config"]["digest"]]


@pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")
async def test_skopeo_round_trip(client, repo, tmp_path):
    src = tmp_path / "src"
    write_oci_layout(
        src,
        "v1",
        [
            {"bin/app": os.urandom(200_000), "etc/app.conf": b"threads=4\n"},
            {"opt/models/face.onnx": os.urandom(1_500_000)},
            {"README": b"three layers"},
        ],
    )
    host = f"127.0.0.1:{client.server.port}"
    await run(SKOPEO, "copy", "--dest-tls-verify=false", f"oci:{src}:v1", f"docker://{host}/{repo}:v1")
    raw = await run(SKOPEO, "inspect", TLS, "--raw", f"docker://{host}/{repo}:v1")
    assert json.loads(raw)["layers"][1]["size"] > 1_000_000
    out = tmp_path / "out"
    await run(SKOPEO, "copy", "--src-tls-verify=false", f"docker://{host}/{repo}:v1", f"oci:{out}:v1")
    assert _layout_digests(out) == _layout_digests(src)
    tags = json.loads(await run(SKOPEO, "list-tags", TLS, f"docker://{host}/{repo}"))
    assert tags["Tags"] == ["v1"]


@pytest.mark.skipif(SKOPEO is None or PODMAN is None, reason="skopeo or podman is not installed")
async def test_podman_pulls_what_skopeo_pushed(client, repo, tmp_path):
    src = tmp_path / "src"
    write_oci_layout(src, "v1", [{"bin/app": os.urandom(300_000)}, {"opt/models/face.onnx": os.urandom(200_000)}])
    host = f"127.0.0.1:{client.server.port}"
    await run(SKOPEO, "copy", "--dest-tls-verify=false", f"oci:{src}:v1", f"docker://{host}/{repo}:v1")
    pushed = json.loads(await run(SKOPEO, "inspect", TLS, f"docker://{host}/{repo}:v1"))
    podman = Podman(tmp_path / "podman")
    try:
        code, out = await podman("pull", TLS, f"{host}/{repo}:v1")
        assert code == 0, out
        code, out = await podman("image", "inspect", "--format", "{{.Digest}} {{len .RootFS.Layers}}", f"{host}/{repo}:v1")
        assert code == 0, out
        assert out.split() == [pushed["Digest"], "2"]
    finally:
        podman.close()


async def test_oras_push_pull_with_subject_and_referrers(client, repo, tmp_path, monkeypatch):
    import oras.oci
    import oras.provider

    host = f"127.0.0.1:{client.server.port}"
    monkeypatch.chdir(tmp_path)
    Path("model.onnx").write_bytes(os.urandom(100_000))
    Path("descriptor.json").write_text('{"name": "face-recog", "version": "1.0"}')
    registry = oras.provider.Registry(host, insecure=True)

    def push_and_pull() -> tuple[dict, dict, list[str]]:
        registry.push(target=f"{host}/{repo}:1.0", files=["model.onnx", "descriptor.json"], quiet=True)
        subject_manifest = registry.get_manifest(f"{host}/{repo}:1.0")
        subject = oras.oci.Subject.from_manifest(subject_manifest)
        Path("signature.txt").write_text("signed")
        registry.push(
            target=f"{host}/{repo}:sig",
            files=["signature.txt"],
            subject=subject,
            manifest_annotations={"purpose": "signature"},
            quiet=True,
        )
        pulled = registry.pull(target=f"{host}/{repo}:1.0", outdir=str(tmp_path / "pulled"))
        return subject_manifest, {"digest": subject.digest}, pulled

    subject_manifest, subject, pulled = await asyncio.to_thread(push_and_pull)
    assert sorted(Path(p).name for p in pulled) == ["descriptor.json", "model.onnx"]
    assert (tmp_path / "pulled" / "model.onnx").read_bytes() == Path("model.onnx").read_bytes()
    resp = await client.get(f"/v2/{repo}/referrers/{subject['digest']}")
    referrers = (await resp.json())["manifests"]
    assert len(referrers) == 1
    assert referrers[0]["annotations"] == {"purpose": "signature"}
    sig = await client.get(f"/v2/{repo}/manifests/sig")
    assert referrers[0]["digest"] == sig.headers["Docker-Content-Digest"]
