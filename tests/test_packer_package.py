"""The thin package model: read/write as single operations on both backends, determinism, limits."""

from __future__ import annotations

import json

import pytest

from packer.descriptor import AlgorithmDescriptor, DescriptorError
from packer.exchange import package_from_document, package_to_document
from packer.package import (
    Package,
    PackageError,
    PackageFile,
    PackageTooLarge,
    build_manifest,
    read_package,
    validate_path,
    write_package,
)
from proxy.api.state import REGISTRY
from proxy.oci import mediatypes as mt
from tests.support.oci import descriptor as oci_descriptor, push_blob
from tests.support.packer import DESCRIPTOR


def _package(order: list[str] | None = None) -> Package:
    files = {"b/model.onnx": b"\x00" * 3000, "a.json": b'{"k": 1}', "c.txt": b"c"}
    package = Package(dict(DESCRIPTOR), annotations={"org.example": "v"})
    for path in order or list(files):
        package.put(path, files[path])
    return package


async def test_write_then_read_round_trip(client, repo):
    service = client.app[REGISTRY]
    package = _package()
    result = await write_package(service, repo, "1.0", package)
    assert result.written
    loaded = await read_package(service, repo, "1.0")
    assert loaded.digest == result.digest and loaded.media_type == mt.OCI_MANIFEST
    assert loaded.package.descriptor == DESCRIPTOR  # unknown fields ("x-vendor") kept
    assert {p: f.data for p, f in loaded.package.files.items()} == {p: f.data for p, f in package.files.items()}
    assert loaded.package.annotations == {"org.example": "v"}
    assert loaded.package.digest() == package.digest()
    by_digest = await read_package(service, repo, result.digest)
    assert by_digest.package.digest() == package.digest()
    # What a registry client sees is the same manifest.
    resp = await client.get(f"/v2/{repo}/manifests/1.0", headers={"Accept": mt.OCI_MANIFEST})
    assert await resp.read() == result.manifest


async def test_writing_is_deterministic_and_skips_an_identical_tag(client, repo):
    service = client.app[REGISTRY]
    first = await write_package(service, repo, "1.0", _package(["c.txt", "a.json", "b/model.onnx"]))
    again = await write_package(service, repo, "1.0", _package(["b/model.onnx", "c.txt", "a.json"]))
    assert again.digest == first.digest and again.manifest == first.manifest
    assert first.written and not again.written
    doc = json.loads(first.manifest)
    assert [layer["annotations"][mt.ANNOTATION_TITLE] for layer in doc["layers"]] == ["a.json", "b/model.onnx", "c.txt"]
    assert first.manifest == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert "created" not in first.manifest.decode()


async def test_blobs_are_mounted_from_the_source_repository(client, repo):
    service = client.app[REGISTRY]
    package = _package()
    await write_package(service, repo, "1.0", package)
    package.annotations["another"] = "manifest"
    result = await write_package(service, f"{repo}-copy", "1.0", package, source_repo=repo)
    loaded = await read_package(service, f"{repo}-copy", result.digest)
    assert loaded.package.files["b/model.onnx"].data == b"\x00" * 3000


async def test_cap_is_enforced_before_download_and_on_write(client, repo):
    service = client.app[REGISTRY]
    await write_package(service, repo, "1.0", _package())
    with pytest.raises(PackageTooLarge, match="over the 1000-byte package cap"):
        await read_package(service, repo, "1.0", cap=1000)
    with pytest.raises(PackageTooLarge):
        await write_package(service, repo, "2.0", _package(), cap=1000)
    assert (await client.get(f"/v2/{repo}/manifests/2.0")).status == 404


async def _put_manifest(client, repo: str, tag: str, layers: list[tuple[bytes, dict]], config: bytes = b"{}") -> None:
    await push_blob(client, repo, config)
    docs = []
    for data, notes in layers:
        await push_blob(client, repo, data)
        docs.append(oci_descriptor(data, mt.OCI_LAYER_TAR, **({"annotations": notes} if notes else {})))
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": oci_descriptor(config, mt.ALGORITHM_CONFIG),
                "layers": docs}
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=json.dumps(manifest),
                            headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("layers,config_blob,message", [
    ([(b"x", {})], b"{}", "has no org.opencontainers.image.title"),
    ([(b"x", {mt.ANNOTATION_TITLE: "../x"})], b"{}", "path traversal"),
    ([(b"x", {mt.ANNOTATION_TITLE: "a"}), (b"y", {mt.ANNOTATION_TITLE: "a"})], b"{}", "same file path"),
    ([], b"[1]", "must be a JSON object"),
    ([], b"{nope", "not valid JSON"),
])
async def test_unreadable_packages(client, repo, layers, config_blob, message):
    await _put_manifest(client, repo, "1.0", layers, config_blob)
    with pytest.raises(PackageError, match=message):
        await read_package(client.app[REGISTRY], repo, "1.0")


async def test_missing_package(client, repo):
    with pytest.raises(PackageError, match="not found"):
        await read_package(client.app[REGISTRY], repo, "nope")


@pytest.mark.parametrize("path,ok", [
    ("a", True), ("a/b/c.json", True), (".hidden", True), ("a..b", True),
    ("", False), ("/abs", False), ("../up", False), ("a/../b", False), ("a//b", False), ("a/./b", False),
    ("a/", False), ("a\\b", False), ("a\x00b", False), ("x" * 1025, False),
])
def test_paths(path, ok):
    if ok:
        assert validate_path(path) == path
    else:
        with pytest.raises(PackageError):
            validate_path(path)


def test_manifest_carries_subject_artifact_type_and_config_type():
    from proxy.oci.manifest import Descriptor

    package = _package()
    package.artifact_type = mt.BUSINESS
    package.subject = Descriptor(mt.OCI_MANIFEST, "sha256:" + "a" * 64, 123)
    doc = json.loads(build_manifest(package))
    assert doc["artifactType"] == mt.BUSINESS
    assert doc["subject"] == {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 123}
    assert doc["config"]["mediaType"] == mt.ALGORITHM_CONFIG


@pytest.mark.parametrize("document,message", [
    ([], "package: must be a JSON object"),
    ({"descriptor": {}, "surprise": 1}, "unknown fields"),
    ({"descriptor": "x"}, "descriptor: must be a JSON object"),
    ({"descriptor": {}, "annotations": {"a": 1}}, "annotations: must be an object of strings"),
    ({"descriptor": {}, "files": {}}, "files: must be a list"),
    ({"descriptor": {}, "files": [{"path": "a", "data": "!"}]}, "not valid base64"),
    ({"descriptor": {}, "files": [{"path": "a", "data": 5}]}, "must be a base64 string"),
    ({"descriptor": {}, "files": [{"path": "a", "data": ""}, {"path": "a", "data": ""}]}, "duplicate path"),
    ({"descriptor": {}, "files": [{"path": "a", "data": "", "mediaType": ""}]}, "mediaType"),
    ({"descriptor": {}, "files": [{"path": "a", "data": "A" * 2000}]}, "over the 1000-byte package cap"),
])
def test_plugin_answers_are_validated(document, message):
    with pytest.raises(PackageError, match=message):
        package_from_document(document, _package(), 1000)


def test_exchange_round_trip_keeps_media_types_and_not_the_subject():
    package = _package()
    package.files["c.txt"] = PackageFile("c.txt", b"c", "text/plain", {"k": "v"})
    back = package_from_document(json.loads(json.dumps(package_to_document(package))), package, 1 << 20)
    assert back.digest() == package.digest()


def test_descriptor_model_keeps_unknown_fields_and_names_bad_ones():
    descriptor = AlgorithmDescriptor.parse(json.dumps(DESCRIPTOR))
    assert descriptor.to_dict() == DESCRIPTOR
    descriptor.runtime.images[0].ref = "images/face-recog:v1-soft"
    assert descriptor.to_dict()["runtime"]["images"][0] == {"ref": "images/face-recog:v1-soft", "models": ["opt/models/*.onnx"]}
    assert AlgorithmDescriptor.parse({"name": "a", "version": "1"}).to_dict() == {"name": "a", "version": "1"}
    with pytest.raises(DescriptorError) as info:
        AlgorithmDescriptor.parse({"name": "a", "version": "1", "runtime": {"images": [{"models": []}]}})
    assert info.value.field == "runtime.images.0.ref"
    with pytest.raises(DescriptorError, match="not valid JSON"):
        AlgorithmDescriptor.parse(b"{")
