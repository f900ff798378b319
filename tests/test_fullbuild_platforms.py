"""Multi-platform runtime images end to end, on both backends: a runtime image pushed as
an index of linux/amd64, linux/arm64/v8 and an accelerator build (linux/amd64+cuda12),
each platform with its own file; a full build licenses each platform, the full package
lists them with their ``platform``, and skopeo and podman pick one; the archive for one
platform or all; reuse per platform; a descriptor naming a subset; unknown platforms."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from packer.archive import ArchiveError, ArchiveLimits, plan_archive
from packer.fullbuild.platforms import ANNOTATION_PLATFORM_OF
from packer.licensing.settings import LicenseConfig
from packer.platform import ANNOTATION_FEATURES, Platform
from proxy.api.state import REGISTRY
from proxy.oci import mediatypes as mt
from tests.support.oci import digest_of, push_blob
from tests.support.podman import PODMAN, Podman
from tests.support.tarlayers import plain_layer
from tests.test_fullbuild_e2e import SKOPEO, fb, fb_config, keys, manifest, run, run_build, write_business  # noqa: F401

pytestmark = pytest.mark.skipif(not Path(SKOPEO).exists(), reason="skopeo is not installed")

MODEL = "opt/models/face.onnx"
LICENSE_PATH = LicenseConfig.model_fields["license_path"].default.lstrip("/")
# (index entry platform, annotations, the file that tells the platforms apart)
PLATFORMS = [
    ({"os": "linux", "architecture": "amd64"}, {}, b"amd64\n"),
    ({"os": "linux", "architecture": "arm64", "variant": "v8"}, {}, b"arm64\n"),
    ({"os": "linux", "architecture": "amd64"}, {ANNOTATION_FEATURES: "cuda12"}, b"amd64+cuda12\n"),
]


@dataclass
class Runtime:
    repo: str
    index_digest: str
    children: list[str]  # source manifest digests, in PLATFORMS order
    models: list[bytes]
    layers: list[str]  # the per-platform layer digest of each child


def _gz(tar: bytes) -> bytes:
    return gzip.compress(tar, mtime=0)


DOCKER = {"index": mt.DOCKER_MANIFEST_LIST, "manifest": mt.DOCKER_MANIFEST, "config": mt.DOCKER_CONFIG,
          "layer": mt.DOCKER_LAYER_GZIP}
OCI = {"index": mt.OCI_INDEX, "manifest": mt.OCI_MANIFEST, "config": mt.OCI_CONFIG, "layer": mt.OCI_LAYER_GZIP}


async def push_runtime(client, tmp_path: Path, repo: str | None = None, tag: str = "v1",
                       platforms=PLATFORMS, note: str | None = None, types: dict[str, str] = OCI) -> Runtime:
    """A shared base layer and one layer per platform (its ``etc/arch`` and a model); a
    Docker manifest list (``types=DOCKER``) carries features in ``platform.features``."""
    repo = repo or f"images/multi{uuid.uuid4().hex[:10]}"
    base = _gz(plain_layer({"etc/os-release": b"ID=test\n"}))
    await push_blob(client, repo, base)
    entries, children, models, layers = [], [], [], []
    for platform, notes, arch in platforms:
        model = os.urandom(20_000)
        tar = plain_layer({"etc/arch": arch, MODEL: model})
        layer = _gz(tar)
        config = json.dumps({"architecture": platform["architecture"], "os": platform["os"],
                             **({"variant": platform["variant"]} if "variant" in platform else {}),
                             "config": {"Labels": {"arch": arch.decode().strip()}},
                             "rootfs": {"type": "layers", "diff_ids": [
                                 digest_of(gzip.decompress(base)), digest_of(tar)]}}).encode()
        doc = json.dumps({"schemaVersion": 2, "mediaType": types["manifest"],
                          "config": {"mediaType": types["config"], "digest": digest_of(config), "size": len(config)},
                          "layers": [{"mediaType": types["layer"], "digest": digest_of(b), "size": len(b)}
                                     for b in (base, layer)]}).encode()
        for blob in (config, layer):
            await push_blob(client, repo, blob)
        resp = await client.put(f"/v2/{repo}/manifests/{digest_of(doc)}", data=doc,
                                headers={"Content-Type": types["manifest"]})
        assert resp.status == 201, await resp.text()
        entry = {"mediaType": types["manifest"], "digest": digest_of(doc), "size": len(doc), "platform": platform}
        if notes and types is DOCKER:
            entry["platform"] = {**platform, "features": notes[ANNOTATION_FEATURES].split(",")}
        elif notes:
            entry["annotations"] = notes
        entries.append(entry)
        children.append(digest_of(doc))
        models.append(model)
        layers.append(digest_of(layer))
    index = {"schemaVersion": 2, "mediaType": types["index"], "manifests": entries}
    if note:
        index["annotations"] = {"org.example.note": note}
    data = json.dumps(index).encode()
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=data, headers={"Content-Type": types["index"]})
    assert resp.status == 201, await resp.text()
    return Runtime(repo, digest_of(data), children, models, layers)


def descriptor(ref: str, platforms: list[str] | None = None) -> bytes:
    image = {"ref": ref, "models": [MODEL]}
    if platforms is not None:
        image["platforms"] = platforms
    return json.dumps({"name": "face", "version": "1.0", "platform": "linux/amd64",
                       "runtime": {"images": [image]}}).encode()


async def business(client, ref: str, platforms: list[str] | None = None) -> str:
    name = f"business/door/face{uuid.uuid4().hex[:10]}"
    await write_business(client, name, "1.0", descriptor(ref, platforms), {"README.md": b"readme\n"})
    return f"{name}:1.0"


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getnames()


def layer_files(blob: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


async def skopeo_pull(src: str, dest: Path, *flags: str) -> dict[str, bytes]:
    """Copy ``src`` to a ``dir:`` and return the files of its image layers, merged."""
    out = await run(SKOPEO, "copy", "--src-tls-verify=false", *flags, src, f"dir:{dest}")
    assert out.returncode == 0, out.stderr
    doc = json.loads((dest / "manifest.json").read_text())
    files: dict[str, bytes] = {}
    for layer in doc["layers"]:
        files.update(layer_files((dest / layer["digest"].split(":")[1]).read_bytes()))
    return files


async def test_every_platform_is_licensed_and_pulled_by_platform(fb, tmp_path):  # noqa: F811
    runtime = await push_runtime(fb, tmp_path)
    package = await business(fb, f"{runtime.repo}:v1")
    build = await run_build(fb, package)
    image = build["result"]["images"][0]
    assert [p["platform"] for p in image["platforms"]] == ["linux/amd64", "linux/arm64/v8", "linux/amd64+cuda12"]
    assert [p["source_digest"] for p in image["platforms"]] == runtime.children
    assert image["encrypted_files"] == 3

    # The licensed image is an index of the three licensed platforms.
    licensed, licensed_digest = await manifest(fb, runtime.repo, "v1-soft")
    assert [m["platform"] for m in licensed["manifests"]] == [p for p, _, _ in PLATFORMS]
    assert licensed["manifests"][2]["annotations"] == {ANNOTATION_FEATURES: "cuda12"}
    assert [m["digest"] for m in licensed["manifests"]] == [p["digest"] for p in image["platforms"]]

    # The full package lists the thin package, the licensed index and each platform.
    full, full_digest = await manifest(fb, package.split(":")[0], "1.0-soft")
    thin, whole, *per_platform = full["manifests"]
    assert thin["artifactType"] == mt.BUSINESS and "platform" not in thin
    assert whole["digest"] == licensed_digest and "platform" not in whole
    assert [(e["digest"], e["platform"]) for e in per_platform] == \
        [(m["digest"], m["platform"]) for m in licensed["manifests"]]
    for entry, source in zip(per_platform, runtime.children):
        assert entry["annotations"][ANNOTATION_PLATFORM_OF] == f"{runtime.repo}:v1-soft"
        assert entry["annotations"]["org.algomint.image.source"] == f"{runtime.repo}@{source}"
    assert per_platform[2]["annotations"][ANNOTATION_FEATURES] == "cuda12"

    # skopeo picks each platform from the full package (by digest, in the business repository).
    host = f"127.0.0.1:{fb.server.port}"
    business_repo = package.split(":")[0]
    for arch, variant, expected in (("amd64", None, b"amd64\n"), ("arm64", "v8", b"arm64\n")):
        flags = ["--override-os", "linux", "--override-arch", arch] + (["--override-variant", variant] if variant else [])
        files = await skopeo_pull(f"docker://{host}/{business_repo}@{full_digest}", tmp_path / f"sk-{arch}", *flags)
        assert files["etc/arch"] == expected
        model = runtime.models[0 if arch == "amd64" else 1]
        assert MODEL in files and files[MODEL] != model and model not in files[MODEL]  # sealed
        assert LICENSE_PATH in files

    if PODMAN is None:
        pytest.skip("podman is not installed")
    podman = Podman(tmp_path / "podman")
    try:
        for platform, arch in (("linux/arm64/v8", "arm64"), ("linux/amd64", "amd64")):
            ref = f"{host}/{package}-soft"
            code, out = await podman("pull", "--tls-verify=false", "--platform", platform, ref)
            assert code == 0, out
            code, out = await podman("image", "inspect", ref)
            assert code == 0, out
            info = json.loads(out)[0]
            assert info["Architecture"] == arch
            assert info["Labels"]["arch"] == arch
            assert info["Labels"]["org.algomint.license.kind"] == "soft"
            code, out = await podman("rmi", ref)
            assert code == 0, out
    finally:
        podman.close()


async def test_archive_for_one_platform_or_all(fb, tmp_path):  # noqa: F811
    runtime = await push_runtime(fb, tmp_path)
    package = await business(fb, f"{runtime.repo}:v1")
    build = await run_build(fb, package)
    licensed = {p["platform"]: p["digest"] for p in build["result"]["images"][0]["platforms"]}
    url = f"/api/v1/archive/{package}-soft"

    whole = await fb.get(url)
    assert whole.status == 200
    all_bytes = await whole.read()
    arm = await fb.get(url, params={"platform": "linux/arm64"})
    assert arm.status == 200, await arm.text()
    arm_bytes = await arm.read()
    assert arm.headers["ETag"] != whole.headers["ETag"] and "linux/arm64" in arm.headers["ETag"]
    assert "linux-arm64" in arm.headers["Content-Disposition"]
    assert int(arm.headers["Content-Length"]) == len(arm_bytes) < len(all_bytes)
    # Deterministic: the same bytes on a second download, and a range resumes within them.
    assert await (await fb.get(url, params={"platform": "linux/arm64"})).read() == arm_bytes
    part = await fb.get(url, params={"platform": "linux/arm64"}, headers={"Range": "bytes=1000-"})
    assert part.status == 206 and await part.read() == arm_bytes[1000:]

    names = tar_names(arm_bytes)
    blobs = {n.rsplit("/", 1)[1] for n in names if n.startswith("blobs/sha256/") and len(n) > 20}
    assert licensed["linux/arm64/v8"].split(":")[1] in blobs
    assert licensed["linux/amd64"].split(":")[1] not in blobs
    assert licensed["linux/amd64+cuda12"].split(":")[1] not in blobs
    with tarfile.open(fileobj=io.BytesIO(arm_bytes)) as tf:
        layout = json.loads(tf.extractfile("index.json").read())
    named = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in layout["manifests"]}
    assert named[f"{runtime.repo}:v1-soft"]["digest"] == licensed["linux/arm64/v8"]
    assert named[f"{runtime.repo}:v1-soft"]["platform"]["architecture"] == "arm64"

    (tmp_path / "arm.tar").write_bytes(arm_bytes)
    (tmp_path / "all.tar").write_bytes(all_bytes)
    files = await skopeo_pull(f"oci-archive:{tmp_path / 'arm.tar'}:{runtime.repo}:v1-soft", tmp_path / "arm-out")
    assert files["etc/arch"] == b"arm64\n"
    # The archive of every platform names the licensed index: skopeo picks from it.
    for arch, expected in (("arm64", b"arm64\n"), ("amd64", b"amd64\n")):
        files = await skopeo_pull(f"oci-archive:{tmp_path / 'all.tar'}:{runtime.repo}:v1-soft", tmp_path / f"all-{arch}",
                                  "--override-os", "linux", "--override-arch", arch)
        assert files["etc/arch"] == expected
    # The accelerator variant by its feature name.
    cuda = await fb.get(url, params={"platform": "linux/amd64+cuda12"})
    assert cuda.status == 200
    (tmp_path / "cuda.tar").write_bytes(await cuda.read())
    files = await skopeo_pull(f"oci-archive:{tmp_path / 'cuda.tar'}:{runtime.repo}:v1-soft", tmp_path / "cuda-out")
    assert files["etc/arch"] == b"amd64+cuda12\n"

    # A platform the package does not have, and one that is not a platform name.
    missing = await fb.get(url, params={"platform": "linux/s390x"})
    assert missing.status == 404
    body = (await missing.json())["error"]
    assert body["code"] == "not_found"
    assert body["detail"]["available"] == ["linux/amd64", "linux/amd64+cuda12", "linux/arm64/v8"]
    assert "linux/s390x" in body["message"]
    for bad in ("linux", "Linux/AMD64", "linux/amd64/v8/x", "linux/amd64+", "../../etc", "linux/" + "a" * 5000,
                "linux/amd64\x00", "linux/amd64%0a"):
        resp = await fb.get(url, params={"platform": bad})
        assert resp.status == 400, bad
    # A package without platform-specific manifests has no platform to choose.
    thin = await fb.get(f"/api/v1/archive/{package}", params={"platform": "linux/amd64"})
    assert thin.status == 404


async def test_reuse_per_platform_and_descriptor_subsets(fb, tmp_path):  # noqa: F811
    runtime = await push_runtime(fb, tmp_path)
    first = await run_build(fb, await business(fb, f"{runtime.repo}:v1"))
    by_platform = {p["platform"]: p for p in first["result"]["images"][0]["platforms"]}

    # Another business system, same image: the licensed index is reused whole (same digests).
    second = await run_build(fb, await business(fb, f"{runtime.repo}:v1"))
    assert second["result"]["images"][0]["digest"] == first["result"]["images"][0]["digest"]
    assert all(layer["state"] == "reused" for layer in second["layers"])

    # The same platforms in a new index (another tag): each platform is reused by its
    # source digest, license and key; nothing is rewritten.
    # (the very same platform manifests under a new index)
    source, _ = await manifest(fb, runtime.repo, runtime.index_digest)
    source["annotations"] = {"org.example.note": "v3"}
    index = json.dumps(source).encode()
    resp = await fb.put(f"/v2/{runtime.repo}/manifests/v3", data=index, headers={"Content-Type": mt.OCI_INDEX})
    assert resp.status == 201
    third = await run_build(fb, await business(fb, f"{runtime.repo}:v3"))
    image = third["result"]["images"][0]
    assert image["licensed"] == f"{runtime.repo}:v3-soft"
    assert {p["platform"]: p["digest"] for p in image["platforms"]} == \
        {k: v["digest"] for k, v in by_platform.items()}
    assert all(p["reused_from"] == first["id"] for p in image["platforms"])
    assert all(layer["state"] == "reused" for layer in third["layers"])
    assert image["key_id"] is None  # no new key: every platform keeps its own

    # A descriptor naming a subset: its own licensed tag, only that platform, reused.
    subset = await business(fb, f"{runtime.repo}:v1", ["linux/arm64"])
    fourth = await run_build(fb, subset)
    image = fourth["result"]["images"][0]
    assert image["licensed"] == f"{runtime.repo}:v1-linux-arm64-soft"
    assert image["platforms_named"] == ["linux/arm64"]
    licensed, _ = await manifest(fb, runtime.repo, "v1-linux-arm64-soft")
    assert [m["digest"] for m in licensed["manifests"]] == [by_platform["linux/arm64/v8"]["digest"]]
    full, _ = await manifest(fb, subset.split(":")[0], "1.0-soft")
    assert [e["platform"]["architecture"] for e in full["manifests"] if "platform" in e] == ["arm64"]

    # A new platform subset of a fresh image: only the named platforms are rewritten.
    fresh = await push_runtime(fb, tmp_path)
    built = await run_build(fb, await business(fb, f"{fresh.repo}:v1", ["linux/amd64+cuda12", "linux/amd64"]))
    image = built["result"]["images"][0]
    assert image["licensed"] == f"{fresh.repo}:v1-linux-amd64.linux-amd64_cuda12-soft"
    assert [p["platform"] for p in image["platforms"]] == ["linux/amd64", "linux/amd64+cuda12"]
    rewritten = {layer["digest"] for layer in built["layers"] if layer["state"] == "rewritten"}
    assert rewritten == {fresh.layers[0], fresh.layers[2]}


async def test_unknown_platform_in_the_descriptor_is_refused(fb, tmp_path):  # noqa: F811
    runtime = await push_runtime(fb, tmp_path)
    package = await business(fb, f"{runtime.repo}:v1", ["linux/s390x"])
    resp = await fb.post("/api/v1/full-builds", json={"package": package, "license": "soft"})
    assert resp.status == 422
    body = (await resp.json())["error"]
    assert body["detail"]["field"] == "runtime.images.0.platforms"
    assert "linux/s390x" in body["message"] and "linux/arm64/v8" in body["message"]
    # Nothing was tagged.
    missing = await fb.get(f"/v2/{runtime.repo}/manifests/v1-linux-s390x-soft")
    assert missing.status == 404


async def test_single_image_named_with_another_platform_is_refused(fb, tmp_path):  # noqa: F811
    runtime = await push_runtime(fb, tmp_path, platforms=PLATFORMS[:1])
    single = f"{runtime.repo}@{runtime.children[0]}"
    resp = await fb.post("/api/v1/full-builds", json={
        "package": await business(fb, single, ["linux/arm64"]), "license": "soft"})
    assert resp.status == 422, await resp.text()
    assert "linux/arm64" in (await resp.json())["error"]["message"]
    ok = await run_build(fb, await business(fb, single, ["linux/amd64"]))
    assert ok["result"]["images"][0]["platforms"][0]["platform"] == "linux/amd64"


async def test_a_docker_manifest_list(fb, tmp_path):  # noqa: F811
    """The same with a Docker manifest list, the accelerator named in ``platform.features``."""
    runtime = await push_runtime(fb, tmp_path, types=DOCKER)
    package = await business(fb, f"{runtime.repo}:v1", ["linux/arm64", "linux/amd64+cuda12"])
    build = await run_build(fb, package)
    image = build["result"]["images"][0]
    assert [p["platform"] for p in image["platforms"]] == ["linux/arm64/v8", "linux/amd64+cuda12"]
    licensed = await fb.get(f"/v2/{runtime.repo}/manifests/{image['licensed'].split(':', 1)[1]}",
                            headers={"Accept": mt.DOCKER_MANIFEST_LIST})
    doc = json.loads(await licensed.read())
    assert doc["mediaType"] == mt.DOCKER_MANIFEST_LIST
    assert [m["mediaType"] for m in doc["manifests"]] == [mt.DOCKER_MANIFEST] * 2
    assert doc["manifests"][1]["platform"]["features"] == ["cuda12"]
    full, full_digest = await manifest(fb, package.split(":")[0], "1.0-soft")
    assert [e["platform"] for e in full["manifests"] if "platform" in e] == [m["platform"] for m in doc["manifests"]]
    host = f"127.0.0.1:{fb.server.port}"
    files = await skopeo_pull(f"docker://{host}/{package.split(':')[0]}@{full_digest}", tmp_path / "arm",
                              "--override-os", "linux", "--override-arch", "arm64", "--override-variant", "v8")
    assert files["etc/arch"] == b"arm64\n"
    cuda = await fb.get(f"/api/v1/archive/{package}-soft", params={"platform": "linux/amd64+cuda12"})
    assert cuda.status == 200
    # (this skopeo loads only OCI-typed manifests from an OCI layout: check the layout itself)
    with tarfile.open(fileobj=io.BytesIO(await cuda.read())) as tf:
        layout = json.loads(tf.extractfile("index.json").read())
        named = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in layout["manifests"]}
        chosen = named[image["licensed"]]
        assert chosen["digest"] == image["platforms"][1]["digest"] and chosen["mediaType"] == mt.DOCKER_MANIFEST
        child = json.loads(tf.extractfile(f"blobs/sha256/{chosen['digest'].split(':')[1]}").read())
        arch_layer = tf.extractfile(f"blobs/sha256/{child['layers'][1]['digest'].split(':')[1]}").read()
        assert layer_files(arch_layer)["etc/arch"] == b"amd64+cuda12\n"
        arm = image["platforms"][0]["digest"].split(":")[1]
        assert f"blobs/sha256/{arm}" not in tf.getnames()
    plain = await fb.get(f"/api/v1/archive/{package}-soft", params={"platform": "linux/amd64"})
    assert plain.status == 404  # the subset left the plain amd64 build out


async def test_a_reused_platform_left_tagged_by_an_unfinished_build_is_not_in_the_way(fb, tmp_path):  # noqa: F811
    """A build that reused a platform manifest and tagged it, then never succeeded (a
    crash): the tag holds a manifest labelled with the earlier, succeeded build. The next
    build of the same inputs takes the tag over instead of refusing it."""
    runtime = await push_runtime(fb, tmp_path, platforms=PLATFORMS[:1])
    single = f"{runtime.repo}@{runtime.children[0]}"
    first = await run_build(fb, await business(fb, single))
    licensed = first["result"]["images"][0]["digest"]
    source, _ = await manifest(fb, runtime.repo, runtime.children[0])
    resp = await fb.put(f"/v2/{runtime.repo}/manifests/v9", data=json.dumps(source).encode(),
                        headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201
    body, _ = await manifest(fb, runtime.repo, licensed)
    resp = await fb.put(f"/v2/{runtime.repo}/manifests/v9-soft", data=json.dumps(body, separators=(",", ":")).encode(),
                        headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    again = await run_build(fb, await business(fb, f"{runtime.repo}:v9"))
    image = again["result"]["images"][0]
    assert image["licensed"] == f"{runtime.repo}:v9-soft" and image["digest"] == licensed
    assert image["platforms"][0]["reused_from"] == first["id"]


async def test_nested_indexes_read_for_one_platform_count_against_the_limits(fb, tmp_path):  # noqa: F811
    """Anyone who may push can make an index whose entries claim to be named runtime
    images: reading them for ``?platform=`` is bounded like the rest of the walk."""
    runtime = await push_runtime(fb, tmp_path, platforms=PLATFORMS[:2])
    source, _ = await manifest(fb, runtime.repo, runtime.index_digest)
    nested = []
    for i in range(3):
        doc = json.dumps({**source, "annotations": {"n": str(i)}}).encode()
        resp = await fb.put(f"/v2/{runtime.repo}/manifests/{digest_of(doc)}", data=doc,
                            headers={"Content-Type": mt.OCI_INDEX})
        assert resp.status == 201
        nested.append({"mediaType": mt.OCI_INDEX, "digest": digest_of(doc), "size": len(doc),
                       "annotations": {"org.algomint.image.ref": f"{runtime.repo}:n{i}"}})
    outer = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": nested}).encode()
    resp = await fb.put(f"/v2/{runtime.repo}/manifests/outer", data=outer, headers={"Content-Type": mt.OCI_INDEX})
    assert resp.status == 201
    service = fb.server.app[REGISTRY]
    arm = Platform.parse("linux/arm64")
    plan = await plan_archive(service, runtime.repo, "outer", platform=arm)
    assert [n for n in plan.names if n.endswith(runtime.children[1].split(":")[1])]
    assert not [n for n in plan.names if n.endswith(runtime.children[0].split(":")[1])]
    with pytest.raises(ArchiveError, match="more than 2 manifests"):
        await plan_archive(service, runtime.repo, "outer", ArchiveLimits(max_manifests=2), platform=arm)
    with pytest.raises(ArchiveError, match="exceed"):
        await plan_archive(service, runtime.repo, "outer", ArchiveLimits(max_manifest_bytes=len(outer) + 100),
                           platform=arm)
