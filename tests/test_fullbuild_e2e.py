"""Full builds and archive delivery end to end, on both backends, through real HTTP and
real clients (skopeo), with an image built here that has every tar feature in it."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
import zstandard

from packer.package import ANNOTATION_PLUGINS as PKG_PLUGINS
from packer.package import ANNOTATION_SOURCE as PKG_SOURCE
from packer.package import ANNOTATION_SOURCE_REPOSITORY as PKG_SOURCE_REPOSITORY
from proxy.api.manage.fullbuilds import FULL_BUILDS
from proxy.api.state import REGISTRY
from proxy.app import create_app
from proxy.cli import main as cli_main
from proxy.oci import mediatypes as mt
from tests.conftest import make_config
from tests.support.tarlayers import MODELS, BuiltImage, build_image, raw_member_slices, with_layer
from tests.support.oci import digest_of, error_code, push_blob

SKOPEO = "/usr/bin/skopeo"


async def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A client process; the server under test shares this event loop, so never block it."""
    return await asyncio.to_thread(subprocess.run, list(args), capture_output=True, text=True, timeout=timeout)


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    prefix = tmp_path / "keys" / "soft"
    assert cli_main(["keygen", "--out", str(prefix)]) == 0
    return {"private": prefix.with_suffix(".key"), "public": prefix.with_suffix(".pub")}


@pytest.fixture
def fb_config(tmp_path, backend_kind, request, keys):
    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    return make_config(
        tmp_path, backend_kind, dist,
        licenses__soft={"scheme": "x25519", "public_key": str(keys["public"]), "chunk_size": 4096},
        licenses__hard={"scheme": "dongle", "public_key": str(keys["public"]), "dongle_id": "D-42"},
    )


@pytest.fixture
async def fb(aiohttp_client, fb_config):
    return await aiohttp_client(create_app(fb_config))


class Package:
    def __init__(self, image: BuiltImage, image_repo: str, generic: str, business: str, version: str = "1.0"):
        self.image, self.image_repo, self.generic, self.business, self.version = image, image_repo, generic, business, version

    @property
    def name(self) -> str:
        return f"{self.business}:{self.version}"


def descriptor(image_ref: str | None, models=(MODELS,)) -> bytes:
    doc = {"name": "face", "version": "1.0", "platform": "linux/amd64", "inputs": [], "outputs": [],
           "parameters": {"threshold": 0.5}, "vendorField": {"kept": True}}
    if image_ref is not None:
        doc["runtime"] = {"images": [{"ref": image_ref, "models": list(models)}]}
    return json.dumps(doc).encode()


def thin_manifest(config: bytes, files: dict[str, bytes], artifact_type: str,
                  annotations: dict[str, str] | None = None) -> bytes:
    doc = {
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": mt.ALGORITHM_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": "application/octet-stream", "digest": digest_of(d), "size": len(d),
                    "annotations": {mt.ANNOTATION_TITLE: n}} for n, d in files.items()],
    }
    if annotations:
        doc["annotations"] = annotations
    return json.dumps(doc).encode()


async def push_image(client, repo: str, image: BuiltImage, tag: str = "v1") -> None:
    for blob in [image.config, *(layer.blob for layer in image.layers)]:
        await push_blob(client, repo, blob)
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=image.manifest, headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201, await resp.text()


async def push_generic(client, repo: str, tag: str, config: bytes, files: dict[str, bytes], headers=None) -> str:
    for blob in [config, *files.values()]:
        await push_blob(client, repo, blob, headers=headers)
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=thin_manifest(config, files, mt.ALGORITHM),
                            headers={"Content-Type": mt.OCI_MANIFEST, **(headers or {})})
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"]


async def write_business(client, repo: str, tag: str, config: bytes, files: dict[str, bytes],
                         source: str | None = None, plugins: str = "") -> None:
    """Business packages are algomint's to write: through the service, not /v2, recording
    their generic source as assembly does (``source``: a generic repository; by default
    the same config is pushed there first)."""
    service = client.server.app[REGISTRY]
    if source is None:
        source = "generic/" + repo.split("/", 2)[2]
        await push_generic(client, source, tag, config, {})
    digest = (await service.stat_manifest(source, tag)).digest
    for blob in [config, *files.values()]:
        session = await service.backend.start_upload(repo)

        async def one(data=blob):
            yield data

        await service.backend.finish_upload(repo, session.upload_id, digest_of(blob), one())
    notes = {PKG_SOURCE_REPOSITORY: source, PKG_SOURCE: digest, PKG_PLUGINS: plugins}
    await service.put_manifest(repo, tag, thin_manifest(config, files, mt.BUSINESS, notes), mt.OCI_MANIFEST)


async def make_package(client, tmp_path: Path, models=(MODELS,), image: BuiltImage | None = None) -> Package:
    uid = uuid.uuid4().hex[:10]
    image = image or build_image(tmp_path / f"img-{uid}")
    pkg = Package(image, f"images/face{uid}", f"generic/face{uid}", f"business/door/face{uid}")
    await push_image(client, pkg.image_repo, image)
    config = descriptor(f"{pkg.image_repo}:v1", models)
    files = {"README.md": b"generic readme\n"}
    await push_generic(client, pkg.generic, "1.0", config, files)
    await write_business(client, pkg.business, "1.0", config, {**files, "form.json": b'{"door": true}'}, pkg.generic)
    return pkg


async def run_build(client, package: str, license: str = "soft", expect: str = "succeeded") -> dict:
    resp = await client.post("/api/v1/full-builds", json={"package": package, "license": license})
    assert resp.status in (200, 202), await resp.text()
    build = await resp.json()
    for _ in range(600):
        resp = await client.get(f"/api/v1/full-builds/{build['id']}")
        build = await resp.json()
        if build["state"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.05)
    assert build["state"] == expect, build
    return build


async def manifest(client, repo: str, ref: str) -> tuple[dict, str]:
    resp = await client.get(f"/v2/{repo}/manifests/{ref}",
                            headers={"Accept": f"{mt.OCI_MANIFEST}, {mt.OCI_INDEX}"})
    assert resp.status == 200, await resp.text()
    return json.loads(await resp.read()), resp.headers["Docker-Content-Digest"]


async def blob(client, repo: str, digest: str) -> bytes:
    resp = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert resp.status == 200
    data = await resp.read()
    assert digest_of(data) == digest
    return data


def untar_layer(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


# -- the main flow ---------------------------------------------------------------------------
async def test_soft_full_build_end_to_end(fb, tmp_path, keys):
    pkg = await make_package(fb, tmp_path)
    build = await run_build(fb, pkg.name)
    assert build["bytes_done"] == build["bytes_total"] > 0
    assert {layer["state"] for layer in build["layers"]} == {"reused", "rewritten"}
    assert build["result"]["tag"] == f"{pkg.business}:1.0-soft"

    # The licensed image: unchanged layer keeps its digest, model layers are new.
    licensed, licensed_digest = await manifest(fb, pkg.image_repo, "v1-soft")
    assert licensed_digest == build["result"]["images"][0]["digest"]
    original = pkg.image.layers
    assert licensed["layers"][0]["digest"] == original[0].digest
    assert licensed["layers"][1]["digest"] != original[1].digest
    # Its model is most of that zstd layer: [full_builds] layer_compression = "auto" writes it uncompressed.
    assert licensed["layers"][2]["mediaType"] == mt.OCI_LAYER_TAR
    assert licensed["layers"][2]["digest"] == build["layers"][2]["diff_id"]
    assert len(licensed["layers"]) == len(original) + 1  # + the license layer
    config = json.loads(await blob(fb, pkg.image_repo, licensed["config"]["digest"]))
    assert config["config"]["Labels"]["org.algomint.license.kind"] == "soft"
    assert config["config"]["Labels"]["org.algomint.source.image"] == f"{pkg.image_repo}@{pkg.image.digest}"
    assert config["config"]["Entrypoint"] == ["/usr/bin/run"]

    # Unpack every licensed layer: diff_ids match, non-model bytes identical, models decrypt.
    rootfs = tmp_path / "rootfs"
    for i, layer in enumerate(licensed["layers"]):
        tar = untar_layer(await blob(fb, pkg.image_repo, layer["digest"]))
        assert config["rootfs"]["diff_ids"][i] == digest_of(tar)
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            for member in tf.getmembers():
                if member.isfile() and not member.issparse():
                    target = rootfs / member.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tf.extractfile(member).read())
        if i < len(original):
            models = original[i].models
            old = {m.name: raw for m, raw in raw_member_slices(original[i].tar)}
            for member, raw in raw_member_slices(tar):
                if member.name not in models:
                    assert raw == old[member.name], member.name
    license_file = rootfs / "etc/algomint/license.json"
    assert json.loads(license_file.read_text())["kind"] == "soft"
    encrypted = rootfs / "opt/models/face.onnx"
    assert encrypted.read_bytes() != pkg.image.models["opt/models/face.onnx"]
    assert cli_main(["decrypt", "--license-key", str(keys["private"]), str(rootfs)]) == 0
    for path, data in pkg.image.models.items():
        assert (rootfs / path).read_bytes() == data, path
    assert (rootfs / "opt/app/config.yaml").read_bytes() == b"threshold: 1"

    # The full package index and the license-specific descriptor.
    index, index_digest = await manifest(fb, pkg.business, "1.0-soft")
    assert index_digest == build["result"]["digest"]
    assert index["artifactType"] == mt.FULL
    thin_desc, image_desc = index["manifests"]
    assert image_desc["digest"] == licensed_digest
    assert image_desc["annotations"]["org.algomint.image.ref"] == f"{pkg.image_repo}:v1-soft"
    thin, _ = await manifest(fb, pkg.business, thin_desc["digest"])
    desc = json.loads(await blob(fb, pkg.business, thin["config"]["digest"]))
    assert desc["runtime"]["images"][0]["ref"] == f"{pkg.image_repo}@{licensed_digest}"
    assert desc["license"]["kind"] == "soft" and desc["vendorField"] == {"kept": True}
    # The image's parts are pullable from the business repository too.
    await blob(fb, pkg.business, licensed["layers"][1]["digest"])

    # Re-running the same build is a no-op that returns the same build.
    resp = await fb.post("/api/v1/full-builds", json={"package": pkg.name, "license": "soft"})
    assert resp.status == 200 and (await resp.json())["id"] == build["id"]

    # Real clients accept the licensed image.
    host = f"127.0.0.1:{fb.server.port}"
    out = await run(SKOPEO, "inspect", "--tls-verify=false", f"docker://{host}/{pkg.image_repo}:v1-soft")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Labels"]["org.algomint.license.kind"] == "soft"
    copied = await run(SKOPEO, "copy", "--src-tls-verify=false", f"docker://{host}/{pkg.image_repo}:v1-soft",
                             f"oci:{tmp_path / 'skopeo-image'}:x")
    assert copied.returncode == 0, copied.stderr
    # ... and the full package through /v2 from the business repository.
    raw = await run(SKOPEO, "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{pkg.business}:1.0-soft")
    assert raw.returncode == 0 and json.loads(raw.stdout)["artifactType"] == mt.FULL
    part = await run(SKOPEO, "copy", "--src-tls-verify=false", f"docker://{host}/{pkg.business}@{licensed_digest}",
                           f"oci:{tmp_path / 'skopeo-part'}:x")
    assert part.returncode == 0, part.stderr

    # The oras SDK pulls the license-specific thin package's files from the full package.
    import oras.provider

    def oras_pull() -> list[str]:
        registry = oras.provider.Registry(host, insecure=True)
        return registry.pull(target=f"{host}/{pkg.business}@{thin_desc['digest']}", outdir=str(tmp_path / "oras"))

    pulled = await asyncio.to_thread(oras_pull)
    assert sorted(Path(p).name for p in pulled) == ["README.md", "form.json"]
    assert (tmp_path / "oras" / "form.json").read_bytes() == b'{"door": true}'

    await check_archive(fb, pkg, index_digest, tmp_path, host)
    await check_freeze(fb, pkg, build["id"])


async def check_archive(fb, pkg: Package, index_digest: str, tmp_path: Path, host: str) -> None:
    url = f"/api/v1/archive/{pkg.business}:1.0-soft"
    resp = await fb.get(url)
    assert resp.status == 200
    body = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(body)
    assert resp.headers["ETag"] == f'"{index_digest}"'
    again = await fb.get(url)
    assert await again.read() == body
    head = await fb.head(url)
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(body)
    for offset in (1, 511, 512, 1537, len(body) // 3, len(body) // 2 + 7, len(body) - 1):
        part = await fb.get(url, headers={"Range": f"bytes={offset}-"})
        assert part.status == 206
        assert part.headers["Content-Range"] == f"bytes {offset}-{len(body) - 1}/{len(body)}"
        assert body[:offset] + await part.read() == body
    middle = await fb.get(url, headers={"Range": "bytes=1000-1999"})
    assert await middle.read() == body[1000:2000]
    for bad in ("bytes=abc", "bytes=0-1,5-6", f"bytes={len(body)}-", "items=0-1"):
        resp = await fb.get(url, headers={"Range": bad})
        assert resp.status == 416, bad
        assert resp.headers["Content-Range"] == f"bytes */{len(body)}"
    stale = await fb.get(url, headers={"Range": "bytes=10-", "If-Range": '"sha256:other"'})
    assert stale.status == 200 and len(await stale.read()) == len(body)
    by_digest = await fb.get(f"/api/v1/archive/{pkg.business}@{index_digest}")
    assert by_digest.status == 200

    zresp = await fb.get(url + "?compress=zstd")
    assert zresp.status == 200
    assert zstandard.ZstdDecompressor().decompressobj().decompress(await zresp.read()) == body.replace(
        f"{pkg.business}:1.0-soft".encode(), f"{pkg.business}:1.0-soft".encode())

    # A valid OCI layout: oci-layout and index.json first, every blob named by its digest.
    archive = tmp_path / "pkg.tar"
    archive.write_bytes(body)
    with tarfile.open(archive) as tf:
        names = tf.getnames()
        assert names[:2] == ["oci-layout", "index.json"]
        assert len(names) == len(set(names))
        layout_index = json.loads(tf.extractfile("index.json").read())
        refs = [m["annotations"]["org.opencontainers.image.ref.name"] for m in layout_index["manifests"]]
        assert refs == [f"{pkg.business}:1.0-soft", f"{pkg.image_repo}:v1-soft"]
        for member in tf.getmembers():
            if member.isfile() and member.name.startswith("blobs/sha256/"):
                assert hashlib.sha256(tf.extractfile(member).read()).hexdigest() == member.name.rsplit("/", 1)[1]
            assert member.mtime == 0 and member.uid == 0 and member.gid == 0
    out = await run(SKOPEO, "copy", f"oci-archive:{archive}:{pkg.image_repo}:v1-soft",
                          f"oci:{tmp_path / 'from-archive'}:x")
    assert out.returncode == 0, out.stderr


async def check_freeze(fb, pkg: Package, build_id: str) -> None:
    config = descriptor(f"{pkg.image_repo}:v1")
    await push_blob(fb, pkg.generic, config)
    body = thin_manifest(config, {}, mt.ALGORITHM)
    put = lambda repo, tag: fb.put(f"/v2/{repo}/manifests/{tag}", data=body,  # noqa: E731
                                   headers={"Content-Type": mt.OCI_MANIFEST})
    for repo, tag in ((pkg.generic, "1.0"), (pkg.business, "1.0"), (pkg.business, "1.0-soft"),
                      (pkg.image_repo, "v1-soft")):
        resp = await put(repo, tag)
        assert resp.status == 403, (repo, tag)
        error = (await resp.json())["errors"][0]
        assert error["code"] == "DENIED" and build_id in error["message"]
        resp = await fb.delete(f"/v2/{repo}/manifests/{tag}")
        assert resp.status == 403 and await error_code(resp) == "DENIED"
    # A generic version without a full build may still be overwritten.
    assert (await put(pkg.generic, "2.0")).status == 201
    assert (await put(pkg.generic, "2.0")).status == 201
    # Thin tags ending in a license suffix are reserved.
    for tag in ("2.0-soft", "2.0-full", "2.0-hard"):
        resp = await put(pkg.generic, tag)
        assert resp.status == 400 and await error_code(resp) == "TAG_INVALID"


# -- other license kinds and bad input -------------------------------------------------------
async def test_full_license_reuses_every_layer(fb, tmp_path):
    pkg = await make_package(fb, tmp_path)
    build = await run_build(fb, pkg.name, "full")
    licensed, _ = await manifest(fb, pkg.image_repo, "v1-full")
    assert [l["digest"] for l in licensed["layers"]] == [l.digest for l in pkg.image.layers]
    assert {layer["state"] for layer in build["layers"]} == {"reused"}


async def test_hard_license_needs_the_dongle(fb, tmp_path, keys):
    pkg = await make_package(fb, tmp_path)
    await run_build(fb, pkg.name, "hard")
    licensed, _ = await manifest(fb, pkg.image_repo, "v1-hard")
    rootfs = tmp_path / "hard"
    for layer in licensed["layers"]:
        with tarfile.open(fileobj=io.BytesIO(untar_layer(await blob(fb, pkg.image_repo, layer["digest"])))) as tf:
            tf.extractall(rootfs, filter="tar")
    base = ["decrypt", "--license-key", str(keys["private"]), str(rootfs / "opt/models/face.onnx")]
    assert cli_main(base) == 1  # no dongle id
    assert cli_main(base + ["--dongle-id", "D-7"]) == 1  # another dongle
    assert cli_main(base + ["--dongle-id", "D-42"]) == 0
    assert (rootfs / "opt/models/face.onnx").read_bytes() == pkg.image.models["opt/models/face.onnx"]


async def test_tampered_and_truncated_model_files_are_detected(fb, tmp_path, keys):
    pkg = await make_package(fb, tmp_path)
    await run_build(fb, pkg.name)
    licensed, _ = await manifest(fb, pkg.image_repo, "v1-soft")
    files = {}
    for layer in licensed["layers"]:
        with tarfile.open(fileobj=io.BytesIO(untar_layer(await blob(fb, pkg.image_repo, layer["digest"])))) as tf:
            for m in tf.getmembers():
                if m.isfile() and not m.issparse():
                    files[m.name] = tf.extractfile(m).read()
    sealed = files["opt/models/face.onnx"]
    for name, data in (("tampered", sealed[:5000] + bytes([sealed[5000] ^ 1]) + sealed[5001:]),
                       ("truncated", sealed[:-100]), ("dropped-chunk", sealed[:48] + sealed[48 + 4112:])):
        root = tmp_path / name
        (root / "etc/algomint").mkdir(parents=True)
        (root / "etc/algomint/license.json").write_bytes(files["etc/algomint/license.json"])
        (root / "model.onnx").write_bytes(data)
        assert cli_main(["decrypt", "--license-key", str(keys["private"]), str(root)]) == 1, name
        assert (root / "model.onnx").read_bytes() == data  # left as it was


async def test_bad_requests(fb, tmp_path):
    pkg = await make_package(fb, tmp_path)
    post = lambda body: fb.post("/api/v1/full-builds", json=body)  # noqa: E731
    resp = await post({"package": f"{pkg.business}:9.9", "license": "soft"})
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    resp = await post({"package": pkg.name, "license": "platinum"})
    assert resp.status == 422 and "platinum" in (await resp.json())["error"]["message"]
    resp = await post({"package": f"{pkg.generic}:1.0", "license": "soft"})
    assert resp.status == 422
    resp = await post({"package": pkg.name})
    assert resp.status == 422
    resp = await fb.get("/api/v1/full-builds/nope")
    assert resp.status == 404

    # A descriptor without runtime images, and one naming an image that doesn't exist.
    await write_business(fb, pkg.business, "2.0", descriptor(None), {})
    resp = await post({"package": f"{pkg.business}:2.0", "license": "soft"})
    assert resp.status == 422 and "runtime images" in (await resp.json())["error"]["message"]
    await write_business(fb, pkg.business, "3.0", descriptor("images/absent:v1"), {})
    resp = await post({"package": f"{pkg.business}:3.0", "license": "soft"})
    assert resp.status == 422 and "images/absent:v1" in (await resp.json())["error"]["message"]

    # Model globs that match nothing: an encrypting license would seal nothing, so it fails.
    await write_business(fb, pkg.business, "4.0", descriptor(f"{pkg.image_repo}:v1", ["nothing/*.bin"]), {})
    build = await run_build(fb, f"{pkg.business}:4.0", expect="failed")
    assert "nothing/*.bin" in build["error"] and "encrypted" in build["error"]
    assert (await fb.get(f"/v2/{pkg.business}/manifests/4.0-soft")).status == 404
    listing = await (await fb.get("/api/v1/full-builds", params={"package": f"{pkg.business}:4.0"})).json()
    assert [b["id"] for b in listing["items"]] == [build["id"]]

    # Archive requests that can't be served.
    assert (await fb.get(f"/api/v1/archive/{pkg.business}")).status == 400
    assert (await fb.get(f"/api/v1/archive/{pkg.business}:nope")).status == 404
    assert (await fb.get(f"/api/v1/archive/{pkg.business}:1.0?compress=gzip")).status == 400


async def test_unsafe_layer_fails_the_build_and_tags_nothing(fb, tmp_path):
    info = tarfile.TarInfo("../../etc/evil")
    info.size = 1
    layer = info.tobuf(tarfile.USTAR_FORMAT) + b"x" + b"\0" * 511 + b"\0" * 1024
    image = with_layer(build_image(tmp_path / "evil"), layer)
    pkg = await make_package(fb, tmp_path, image=image)
    build = await run_build(fb, pkg.name, expect="failed")
    assert "'..'" in build["error"] and "layer 3" in build["error"]
    assert (await fb.get(f"/v2/{pkg.image_repo}/manifests/v1-soft")).status == 404
    assert (await fb.get(f"/v2/{pkg.business}/manifests/1.0-soft")).status == 404
    # Not frozen: the generic version can still change.
    config = descriptor(f"{pkg.image_repo}:v1")
    resp = await fb.put(f"/v2/{pkg.generic}/manifests/1.0", data=thin_manifest(config, {}, mt.ALGORITHM),
                        headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201


async def test_archive_of_a_generic_package(fb, tmp_path):
    pkg = await make_package(fb, tmp_path)
    resp = await fb.get(f"/api/v1/archive/{pkg.generic}:1.0")
    body = await resp.read()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(body)
    with tarfile.open(fileobj=io.BytesIO(body)) as tf:
        index = json.loads(tf.extractfile("index.json").read())
        assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == f"{pkg.generic}:1.0"
        assert index["manifests"][0]["artifactType"] == mt.ALGORITHM
        assert len([n for n in tf.getnames() if n.startswith("blobs/sha256/")]) == 3  # manifest, config, README


async def test_admin_cli(fb, tmp_path, capsys):
    pkg = await make_package(fb, tmp_path)
    url = f"http://127.0.0.1:{fb.server.port}"
    code = await asyncio.to_thread(cli_main, ["admin", "--url", url, "--json", "full-build", "create", pkg.name,
                                              "--license", "soft", "--wait", "--timeout", "60"])
    assert code == 0
    build = json.loads(capsys.readouterr().out)
    assert build["state"] == "succeeded" and build["result"]["tag"] == f"{pkg.business}:1.0-soft"
    assert await asyncio.to_thread(cli_main, ["admin", "--url", url, "full-build", "show", build["id"]]) == 0
    assert "1.0-soft" in capsys.readouterr().out
    assert await asyncio.to_thread(cli_main, ["admin", "--url", url, "full-build", "list", "--package", pkg.name]) == 0
    assert build["id"] in capsys.readouterr().out
    code = await asyncio.to_thread(cli_main, ["admin", "--url", url, "full-build", "create", pkg.name, "--license", "x"])
    assert code == 1 and "unknown license kind" in capsys.readouterr().err


async def test_interrupted_build_runs_again_after_restart(fb, aiohttp_client, fb_config, tmp_path):
    pkg = await make_package(fb, tmp_path)
    service = fb.server.app[FULL_BUILDS]
    _, digest, _ = await service.builder.check(pkg.name, "soft")
    # A build a crash left half-way: "running", nothing tagged.
    await service.store.db.execute(
        "INSERT INTO full_builds (id, package, repository, tag, license, source_digest, state, created_at, attempts) "
        "VALUES ('crashed', ?, ?, '1.0', 'soft', ?, 'running', 1, 1)", (pkg.name, pkg.business, digest))
    restarted = await aiohttp_client(create_app(fb_config))
    for _ in range(600):
        build = await (await restarted.get("/api/v1/full-builds/crashed")).json()
        if build["state"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.05)
    assert build["state"] == "succeeded" and build["attempts"] == 2, build
    index, _ = await manifest(restarted, pkg.business, "1.0-soft")
    assert index["artifactType"] == mt.FULL


async def test_multi_platform_runtime_image(fb, tmp_path):
    """A runtime image pushed as an index (buildx style, with an attestation manifest)."""
    uid = uuid.uuid4().hex[:10]
    image = build_image(tmp_path / "multi")
    repo = f"images/multi{uid}"
    await push_image(fb, repo, image, tag=image.digest)
    attestation_config = b'{"predicateType":"https://slsa.dev/provenance/v0.2"}'
    statement = b'{"_type":"https://in-toto.io/Statement/v0.1"}'
    await push_blob(fb, repo, attestation_config)
    await push_blob(fb, repo, statement)
    attestation = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.in-toto+json", "digest": digest_of(attestation_config),
                   "size": len(attestation_config)},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": digest_of(statement), "size": len(statement)}],
    }).encode()
    resp = await fb.put(f"/v2/{repo}/manifests/{digest_of(attestation)}", data=attestation,
                        headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest),
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": mt.OCI_MANIFEST, "digest": digest_of(attestation), "size": len(attestation),
         "platform": {"os": "unknown", "architecture": "unknown"}},
    ]}).encode()
    resp = await fb.put(f"/v2/{repo}/manifests/v1", data=index, headers={"Content-Type": mt.OCI_INDEX})
    assert resp.status == 201
    business = f"business/door/multi{uid}"
    await write_business(fb, business, "1.0", descriptor(f"{repo}:v1"), {})
    build = await run_build(fb, f"{business}:1.0")
    licensed, _ = await manifest(fb, repo, "v1-soft")
    assert licensed["mediaType"] == mt.OCI_INDEX and len(licensed["manifests"]) == 1
    child = licensed["manifests"][0]
    assert child["platform"] == {"os": "linux", "architecture": "amd64"} and child["digest"] != image.digest
    assert build["result"]["images"][0]["encrypted_files"] == len(image.models)
    # The archive names the licensed index; skopeo picks the platform from it.
    body = await (await fb.get(f"/api/v1/archive/{business}:1.0-soft")).read()
    (tmp_path / "multi.tar").write_bytes(body)
    out = await run(SKOPEO, "copy", "--override-os", "linux", "--override-arch", "amd64",
                    f"oci-archive:{tmp_path / 'multi.tar'}:{repo}:v1-soft", f"oci:{tmp_path / 'multi-out'}:x")
    assert out.returncode == 0, out.stderr


async def test_descriptor_breaking_the_contract_is_refused(fb, tmp_path):
    pkg = await make_package(fb, tmp_path)
    bad = json.dumps({"name": "face", "version": "1.0", "runtime": {"images": [{"models": ["*.onnx"]}]}}).encode()
    await write_business(fb, pkg.business, "5.0", bad, {})
    resp = await fb.post("/api/v1/full-builds", json={"package": f"{pkg.business}:5.0", "license": "soft"})
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["detail"]["field"] == "runtime.images.0.ref"


async def test_freeze_refuses_algomint_itself_but_not_its_license_tags(fb, tmp_path):
    from proxy.oci.errors import RegistryError
    from proxy.service.policy import SYSTEM, Action, Request
    from proxy.api.state import POLICY

    pkg = await make_package(fb, tmp_path)
    build = await run_build(fb, pkg.name, "full")
    policy = fb.server.app[POLICY]
    with pytest.raises(RegistryError) as refused:
        await policy.check(Request(SYSTEM, Action.PUSH, pkg.business, "1.0"))
    assert refused.value.code == "DENIED" and build["id"] in refused.value.message
    await policy.check(Request(SYSTEM, Action.PUSH, pkg.business, "2.0-soft"))  # reserved for algomint, allowed
