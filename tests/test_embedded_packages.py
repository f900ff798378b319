"""Embedded (device) algorithms end to end, on both backends, through real HTTP: a generic
package that carries its binary and model (pushed with the oras SDK), assembled into a
business package by a chain, licensed by full builds (soft, hard, full), frozen, and
delivered as an archive that ``algomint decrypt`` opens."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from proxy.app import create_app
from proxy.cli import main as cli_main
from proxy.oci import mediatypes as mt
from tests.conftest import make_config
from tests.support.oci import digest_of, error_code, push_blob
from tests.support.packer import create_chain, push_generic, push_plugin, wait_jobs_done
from tests.support.tarlayers import MODELS, build_image
from tests.test_fullbuild_e2e import (  # noqa: F401 - fb, fb_config and keys are fixtures
    blob,
    fb,
    fb_config,
    keys,
    manifest,
    push_image,
    run_build,
    thin_manifest,
    write_business,
)

MODEL = os.urandom(50_000)  # more than one envelope chunk (4096 for soft)
BINARY = b"\x7fELF" + os.urandom(30_000)
SAMPLE = MODEL[20_000:20_064]  # a plaintext sample that must appear nowhere licensed


def edge_descriptor(name: str, version: str, models=("model/*.rknn",), images: list | None = None) -> dict:
    doc = {"name": name, "version": version, "platform": "linux/arm64+npu",
           "inputs": [{"name": "frame", "type": "image/nv12", "description": "camera frame"}],
           "outputs": [{"name": "boxes", "type": "application/json", "description": "detections"}],
           "parameters": {"threshold": 0.4}, "models": list(models), "x-device": {"soc": "rk3588"}}
    if images is not None:
        doc["runtime"] = {"images": images}
    return doc


async def assemble_edge(fb, tmp_path: Path) -> tuple[str, str, str]:
    """generic/edge<uid>:2.0.0 pushed with oras, assembled into business/door<uid>/edge<uid>:2.0.0."""
    uid = uuid.uuid4().hex[:8]
    generic, system = f"generic/edge{uid}", f"door{uid}"
    await push_plugin(fb, f"{system}-form", "1.0", "file", files={"conf/door.json": b'{"door": 7}'})
    await create_chain(fb, system, [generic], [f"plugins/{system}-form:1.0"])
    await push_generic(fb, generic, "2.0.0", {"bin/edge-det": BINARY, "model/edge.rknn": MODEL},
                       tmp_path / f"push-{uid}", descriptor=edge_descriptor(f"edge{uid}", "2.0.0"))
    jobs = await wait_jobs_done(fb, chain=system, timeout=60)
    assert [j["status"] for j in jobs] == ["succeeded"], jobs
    return generic, f"business/{system}/edge{uid}", "2.0.0"


def unpack_package(archive: bytes, out: Path) -> dict:
    """What a device installer does with the deliverable: ``algomint unpack``."""
    path, desc = out.with_suffix(".tar"), out.with_suffix(".json")
    path.write_bytes(archive)
    assert cli_main(["unpack", str(path), "--output", str(out), "--descriptor", str(desc)]) == 0
    return json.loads(desc.read_text())


async def licensed_blobs(fb, repo: str, index_digest: str) -> list[bytes]:
    """Every blob and manifest the full package references in ``repo``."""
    index, _ = await manifest(fb, repo, index_digest)
    out = [json.dumps(index).encode()]
    for child in index["manifests"]:
        doc, _ = await manifest(fb, repo, child["digest"])
        out.append(json.dumps(doc).encode())
        for part in [doc["config"], *doc["layers"]]:
            out.append(await blob(fb, repo, part["digest"]))
    return out


async def test_embedded_package_licensed_frozen_and_delivered(fb, tmp_path, keys):
    generic, business, version = await assemble_edge(fb, tmp_path)
    thin, thin_digest = await manifest(fb, business, version)
    assert thin["artifactType"] == mt.BUSINESS
    # The overview names it an embedded algorithm of its platform.
    entry, params = None, {"limit": "500"}
    while entry is None:
        page = await (await fb.get("/api/v1/catalog", params=params)).json()
        entry = next((e for e in page["items"] if e["repository"] == generic), None)
        assert entry is not None or page["next"], f"{generic} is not in the catalog"
        params = {"limit": "500", "cursor": page["next"]}
    [listed] = [v for v in entry["versions"] if v["version"] == version]
    assert (listed["platform"], listed["kind"]) == ("linux/arm64+npu", "embedded")

    for license, dongle in (("soft", None), ("hard", "D-42")):
        build = await run_build(fb, f"{business}:{version}", license)
        result = build["result"]
        assert result["tag"] == f"{business}:{version}-{license}" and result["images"] == []
        assert result["package"]["encrypted_files"] == ["model/edge.rknn"]
        assert build["bytes_done"] == build["bytes_total"] == len(MODEL)
        [progress] = build["layers"]
        assert progress["state"] == "rewritten" and progress["encrypted_files"] == 1

        # The full package: the licensed package's manifest, provenance to the thin package.
        index, index_digest = await manifest(fb, business, f"{version}-{license}")
        assert index_digest == result["digest"] and index["artifactType"] == mt.FULL
        assert index["subject"]["digest"] == thin_digest
        assert index["annotations"]["org.algomint.license.kind"] == license
        assert index["annotations"]["org.algomint.source.digest"] == thin_digest
        [entry] = index["manifests"]
        licensed, _ = await manifest(fb, business, entry["digest"])
        assert licensed["annotations"]["org.algomint.package"] == f"{business}:{version}"
        titles = {layer["annotations"][mt.ANNOTATION_TITLE]: layer for layer in licensed["layers"]}
        assert sorted(titles) == ["bin/edge-det", "conf/door.json", "etc/algomint/license.json", "model/edge.rknn"]
        assert titles["bin/edge-det"]["digest"] == digest_of(BINARY)  # binaries unchanged, same blob
        assert titles["model/edge.rknn"]["annotations"]["org.algomint.encrypted"] == "algomint-envelope/1"
        assert titles["model/edge.rknn"]["digest"] == progress["result_digest"]
        for data in await licensed_blobs(fb, business, index_digest):
            assert SAMPLE not in data

        # The archive is the deliverable: deterministic, resumable, no plaintext model.
        url = f"/api/v1/archive/{business}:{version}-{license}"
        resp = await fb.get(url)
        assert resp.status == 200 and resp.headers["ETag"] == f'"{index_digest}"'
        archive = await resp.read()
        assert await (await fb.get(url)).read() == archive
        part = await fb.get(url, headers={"Range": f"bytes={len(archive) // 2}-"})
        assert part.status == 206 and archive[: len(archive) // 2] + await part.read() == archive
        assert SAMPLE not in archive and MODEL not in archive

        device = tmp_path / f"device-{license}"
        desc = unpack_package(archive, device)
        assert desc["platform"] == "linux/arm64+npu" and desc["models"] == ["model/*.rknn"]
        assert desc["x-device"] == {"soc": "rk3588"}
        assert desc["license"]["kind"] == license and desc["license"]["encryptedFiles"] == ["model/edge.rknn"]
        assert desc["license"]["licensePath"] == "etc/algomint/license.json"
        assert (device / "bin/edge-det").read_bytes() == BINARY
        sealed = (device / "model/edge.rknn").read_bytes()
        assert sealed[:8] == b"ALGOMENC" and SAMPLE not in sealed
        # An archive changed on the way is refused: the damaged file is not written.
        at = archive.index(sealed[:4096]) + 1000
        broken = archive[:at] + bytes([archive[at] ^ 1]) + archive[at + 1:]
        (tmp_path / "broken.tar").write_bytes(broken)
        assert cli_main(["unpack", str(tmp_path / "broken.tar"), "--output", str(tmp_path / "broken")]) == 1
        assert not (tmp_path / "broken/model/edge.rknn").exists()

        # Refused: a wrong key, a wrong (or missing) dongle id, a tampered chunk.
        other = tmp_path / f"other-{license}"
        assert cli_main(["keygen", "--out", str(other)]) == 0
        dongle_args = ["--dongle-id", dongle] if dongle else []
        base = ["decrypt", str(device), *dongle_args]
        assert cli_main(base + ["--license-key", str(other) + ".key"]) == 1
        if dongle:
            wrong = ["decrypt", str(device), "--license-key", str(keys["private"])]
            assert cli_main(wrong) == 1
            assert cli_main(wrong + ["--dongle-id", "D-7"]) == 1
        tampered = tmp_path / f"tampered-{license}"
        (tampered / "etc/algomint").mkdir(parents=True)
        (tampered / "etc/algomint/license.json").write_bytes((device / "etc/algomint/license.json").read_bytes())
        bad = sealed[:9000] + bytes([sealed[9000] ^ 1]) + sealed[9001:]
        (tampered / "model.rknn").write_bytes(bad)
        assert cli_main(["decrypt", str(tampered), *dongle_args, "--license-key", str(keys["private"])]) == 1
        assert (tampered / "model.rknn").read_bytes() == bad
        assert (device / "model/edge.rknn").read_bytes() == sealed  # refusals changed nothing

        # The right key (and dongle) gives back the exact model.
        assert cli_main(base + ["--license-key", str(keys["private"])]) == 0
        assert (device / "model/edge.rknn").read_bytes() == MODEL
        assert (device / "bin/edge-det").read_bytes() == BINARY

    # Frozen: the generic version, the business tag and the licensed tags.
    generic_thin, _ = await manifest(fb, generic, version)
    body = json.dumps(generic_thin).encode()
    for repo, tag in ((generic, version), (business, version), (business, f"{version}-soft")):
        resp = await fb.put(f"/v2/{repo}/manifests/{tag}", data=body, headers={"Content-Type": mt.OCI_MANIFEST})
        assert resp.status == 403 and await error_code(resp) == "DENIED", (repo, tag)
        assert (await fb.delete(f"/v2/{repo}/manifests/{tag}")).status == 403
    # The sealed model blob is part of the frozen package: not deletable by digest.
    index, _ = await manifest(fb, business, f"{version}-soft")
    licensed, _ = await manifest(fb, business, index["manifests"][0]["digest"])
    model_layer = next(l for l in licensed["layers"] if l["annotations"][mt.ANNOTATION_TITLE] == "model/edge.rknn")
    resp = await fb.delete(f"/v2/{business}/blobs/{model_layer['digest']}")
    assert resp.status in (403, 405) and resp.status != 202

    # A full (unencrypted) build delivers the model in the clear, without a license file.
    build = await run_build(fb, f"{business}:{version}", "full")
    assert build["result"]["package"]["encrypted_files"] == []
    index, _ = await manifest(fb, business, f"{version}-full")
    licensed, _ = await manifest(fb, business, index["manifests"][0]["digest"])
    titles = [l["annotations"][mt.ANNOTATION_TITLE] for l in licensed["layers"]]
    assert "etc/algomint/license.json" not in titles
    assert digest_of(MODEL) in [l["digest"] for l in licensed["layers"]]


async def test_package_with_models_and_a_runtime_image(fb, tmp_path, keys):
    uid = uuid.uuid4().hex[:8]
    image = build_image(tmp_path / "img")
    image_repo, business = f"images/hybrid{uid}", f"business/door/hybrid{uid}"
    await push_image(fb, image_repo, image)
    doc = edge_descriptor("hybrid", "1.0", images=[{"ref": f"{image_repo}:v1", "models": [MODELS]}])
    config = json.dumps(doc).encode()
    files = {"bin/edge-det": BINARY, "model/edge.rknn": MODEL}
    await write_business(fb, business, "1.0", config, files, source=None)
    build = await run_build(fb, f"{business}:1.0", "soft")
    result = build["result"]
    assert result["images"][0]["encrypted_files"] == len(image.models)
    assert result["package"]["encrypted_files"] == ["model/edge.rknn"]
    # Image and package have their own data keys.
    assert result["package"]["key_id"] != result["images"][0]["key_id"]
    index, index_digest = await manifest(fb, business, "1.0-soft")
    assert [m.get("artifactType") for m in index["manifests"]][0] == mt.BUSINESS
    assert index["manifests"][1]["annotations"]["org.algomint.image.ref"] == f"{image_repo}:v1-soft"
    archive = await (await fb.get(f"/api/v1/archive/{business}:1.0-soft")).read()
    assert SAMPLE not in archive
    device = tmp_path / "hybrid"
    desc = unpack_package(archive, device)
    assert desc["runtime"]["images"][0]["tag"] == f"{image_repo}:v1-soft"
    assert cli_main(["decrypt", "--license-key", str(keys["private"]), str(device)]) == 0
    assert (device / "model/edge.rknn").read_bytes() == MODEL
    assert (device / "bin/edge-det").read_bytes() == BINARY


async def test_package_models_follow_the_generic_source(fb, tmp_path):
    uid = uuid.uuid4().hex[:8]
    generic, business = f"generic/edgex{uid}", f"business/door/edgex{uid}"
    files = {"bin/edge-det": BINARY, "model/edge.rknn": MODEL}

    async def generic_and_business(tag: str, generic_doc: dict, business_doc: dict) -> None:
        source = json.dumps(generic_doc).encode()
        for data in [source, *files.values()]:
            await push_blob(fb, generic, data)
        resp = await fb.put(f"/v2/{generic}/manifests/{tag}", data=thin_manifest(source, files, mt.ALGORITHM),
                            headers={"Content-Type": mt.OCI_MANIFEST})
        assert resp.status == 201, await resp.text()
        await write_business(fb, business, tag, json.dumps(business_doc).encode(), files, source=generic)

    # A business copy that dropped the models (a plugin's doing) does not decide them.
    await generic_and_business("1.0", edge_descriptor("e", "1.0"), edge_descriptor("e", "1.0", models=()))
    resp = await fb.post("/api/v1/full-builds", json={"package": f"{business}:1.0", "license": "soft"})
    assert resp.status == 422 and (await resp.json())["error"]["detail"]["field"] == "models"

    # Globs that match no file: an encrypting license fails, nothing tagged, nothing frozen.
    nothing = edge_descriptor("e", "2.0", models=("weights/*.bin",))
    await generic_and_business("2.0", nothing, nothing)
    build = await run_build(fb, f"{business}:2.0", "soft", expect="failed")
    assert "weights/*.bin" in build["error"] and "encrypted" in build["error"]
    assert (await fb.get(f"/v2/{business}/manifests/2.0-soft")).status == 404
    await generic_and_business("2.0", nothing, nothing)  # still writable: not frozen

    # Neither runtime images nor package models: nothing to license.
    empty = edge_descriptor("e", "3.0", models=())
    await generic_and_business("3.0", empty, empty)
    resp = await fb.post("/api/v1/full-builds", json={"package": f"{business}:3.0", "license": "full"})
    assert resp.status == 422 and "models" in (await resp.json())["error"]["message"]

    # A model glob that is not a relative path breaks the descriptor contract.
    bad = edge_descriptor("e", "4.0", models=("/abs/*.rknn",))
    await generic_and_business("4.0", bad, bad)
    resp = await fb.post("/api/v1/full-builds", json={"package": f"{business}:4.0", "license": "soft"})
    assert resp.status == 422 and (await resp.json())["error"]["detail"]["field"].startswith("models")


@pytest.fixture
async def floor_client(aiohttp_client, tmp_path, backend_kind, request, keys):
    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    config = make_config(
        tmp_path, backend_kind, dist,
        licenses__soft={"scheme": "x25519", "public_key": str(keys["public"]), "chunk_size": 4096},
        full_builds__models={"generic/floor*": ["weights/**"]},
    )
    return await aiohttp_client(create_app(config))


async def test_operator_floor_covers_package_files(floor_client, tmp_path, keys):
    """``[full_builds.models]`` matching the generic repository seals package files the
    descriptor does not name (the owner's floor)."""
    uid = uuid.uuid4().hex[:8]
    business = f"business/door/floor{uid}"
    doc = edge_descriptor("f", "1.0", models=())
    files = {"bin/edge-det": BINARY, "weights/deep/edge.bin": MODEL}
    await write_business(floor_client, business, "1.0", json.dumps(doc).encode(), files)
    build = await run_build(floor_client, f"{business}:1.0", "soft")
    assert build["result"]["package"] == {"models": ["weights/**"], "encrypted_files": ["weights/deep/edge.bin"],
                                          "key_id": build["result"]["package"]["key_id"]}
    archive = await (await floor_client.get(f"/api/v1/archive/{business}:1.0-soft")).read()
    assert SAMPLE not in archive
    device = tmp_path / "floor"
    unpack_package(archive, device)
    assert cli_main(["decrypt", "--license-key", str(keys["private"]), str(device)]) == 0
    assert (device / "weights/deep/edge.bin").read_bytes() == MODEL
