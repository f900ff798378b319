"""The full package as one runnable image (``<version>-<license>-image``): the licensed
runtime image plus a package layer synthesised from the thin package's blobs, on both
backends, pulled by skopeo and podman, served with ``Range``, in the archive, and the
attacks on it (rights, tampered blobs, freezes, garbage collection)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
from aiohttp import ClientPayloadError

from packer.fullbuild.runnable import DESCRIPTOR_FILE, LayoutError, layer_layout, stream_layer
from proxy.api.manage.fullbuilds import FULL_BUILDS
from proxy.api.state import REGISTRY
from proxy.app import create_app
from proxy.backend import ManifestData
from proxy.backend.filesystem import FilesystemBackend
from proxy.oci import mediatypes as mt
from tests.conftest import make_config
from tests.support.oci import digest_of, error_code
from tests.support.podman import PODMAN, Podman
from tests.support.tarlayers import MODELS, Layer, _assemble, plain_layer
from tests.test_fullbuild_e2e import (  # noqa: F401 - keys is a fixture
    SKOPEO, blob, descriptor, keys, manifest, push_generic, push_image, run, run_build, write_business,
)
from tests.test_fullbuild_e2e import Package
from tests.test_gc import _gc
from tests.test_layers import put_blob

pytestmark = pytest.mark.skipif(not Path(SKOPEO).exists(), reason="skopeo is not installed")

ACCEPT = {"Accept": f"{mt.OCI_MANIFEST}, {mt.OCI_INDEX}"}
FILES = {"README.md": b"generic readme\n", "form.json": b'{"door": true}',
         "models/weights/" + "w" * 110 + ".bin": os.urandom(3000)}


def _ls_layer() -> bytes | None:
    """``/bin/ls`` and the libraries it loads, from this machine (for ``podman run``)."""
    ls = shutil.which("ls")
    if ls is None:
        return None
    out = subprocess.run(["ldd", ls], check=False, capture_output=True, text=True)
    libs = [part for line in out.stdout.splitlines() for part in line.split() if part.startswith("/")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [ls, *libs]:
            info = tar.gettarinfo(os.path.realpath(path), arcname=("bin/ls" if path == ls else path.lstrip("/")))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(os.path.realpath(path), "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def runnable_source_image():
    """Plain tar features only (podman refuses old GNU sparse entries): a base, a model layer."""
    base = plain_layer({"etc/os-release": b"ID=test\n", "usr/bin/run": b"#!/bin/sh\necho run\n"})
    model = plain_layer({"opt/models/face.onnx": os.urandom(200_000), "opt/app/config.yaml": b"threshold: 1"})
    tars = [base, *([ls] if (ls := _ls_layer()) else []), model]
    return _assemble([Layer(t, gzip.compress(t, mtime=0), mt.OCI_LAYER_GZIP, {}) for t in tars])


async def make_runnable_package(client, uid: str | None = None, system: str = "door") -> Package:
    uid = uid or uuid.uuid4().hex[:10]
    pkg = Package(runnable_source_image(), f"images/run{uid}", f"generic/run{uid}", f"business/{system}/run{uid}")
    await push_image(client, pkg.image_repo, pkg.image)
    config = descriptor(f"{pkg.image_repo}:v1", (MODELS,))
    await push_generic(client, pkg.generic, "1.0", config, {"README.md": FILES["README.md"]})
    await write_business(client, pkg.business, "1.0", config, FILES, pkg.generic)
    return pkg


def members(layer: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        for info in tar.getmembers():
            f = tar.extractfile(info)
            out[info.name] = (info, f.read() if f else b"")
    return out


def rootfs(layers: list[bytes]) -> dict[str, bytes]:
    """The files of an image's layers applied in order (no whiteouts in these images)."""
    files: dict[str, bytes] = {}
    for data in layers:
        for name, (info, content) in members(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).items():
            if info.isfile():
                files["/" + name.lstrip("./")] = content
    return files


@pytest.fixture
def fb_config(tmp_path, backend_kind, request, keys):  # noqa: F811
    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    return make_config(tmp_path, backend_kind, dist,
                       licenses__soft={"scheme": "x25519", "public_key": str(keys["public"]), "chunk_size": 4096},
                       gc__delete_untagged=True, gc__grace_period=0)


@pytest.fixture
async def fb(aiohttp_client, fb_config):
    return await aiohttp_client(create_app(fb_config))


async def _built(fb) -> tuple[Package, dict, dict, str, bytes]:
    pkg = await make_runnable_package(fb)
    build = await run_build(fb, pkg.name)
    image, digest = await manifest(fb, pkg.business, "1.0-soft-image")
    layer_digest = image["layers"][-1]["digest"]
    resp = await fb.get(f"/v2/{pkg.business}/blobs/{layer_digest}")
    assert resp.status == 200, await resp.text()
    return pkg, build, image, digest, await resp.read()


# -- the image, its layer, Range, skopeo and podman --------------------------------------------
async def test_runnable_image_pulls_and_has_everything(fb, tmp_path):
    pkg, build, image, digest, layer = await _built(fb)
    runnable = build["result"]["runnable"]
    assert runnable["images"] == [{"tag": f"{pkg.business}:1.0-soft-image", "digest": digest}]
    licensed, _ = await manifest(fb, pkg.image_repo, "v1-soft")
    # The licensed image's layers, then one uncompressed layer: digest = diff_id.
    assert image["layers"][:-1] == licensed["layers"]
    last = image["layers"][-1]
    assert last == {"mediaType": mt.OCI_LAYER_TAR, "digest": runnable["layer"]["digest"],
                    "size": runnable["layer"]["size"]}
    assert digest_of(layer) == last["digest"] and len(layer) == last["size"]  # checked against the record
    config = json.loads(await blob(fb, pkg.business, image["config"]["digest"]))
    licensed_config = json.loads(await blob(fb, pkg.image_repo, licensed["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == [*licensed_config["rootfs"]["diff_ids"], last["digest"]]
    assert len(config["history"]) == len(licensed_config["history"]) + 1
    assert config["config"]["Labels"]["org.algomint.package.dir"] == "/algomint/package"

    # The layer: the license-specific descriptor and the licensed thin package's files.
    index, _ = await manifest(fb, pkg.business, "1.0-soft")
    thin, _ = await manifest(fb, pkg.business, index["manifests"][0]["digest"])
    entries = members(layer)
    assert entries[DESCRIPTOR_FILE][1] == await blob(fb, pkg.business, thin["config"]["digest"])
    assert json.loads(entries[DESCRIPTOR_FILE][1])["license"]["kind"] == "soft"
    for name, data in FILES.items():
        info, content = entries[f"algomint/package/{name}"]
        assert content == data and info.mode == 0o644 and info.mtime == 0 and info.uid == info.gid == 0
    assert entries["algomint/package/models/weights"][0].isdir()
    assert list(entries)[:3] == ["algomint", "algomint/descriptor.json", "algomint/package"]  # parents first

    # The same bytes every time; HEAD; Range (inside a header, across a blob, a suffix).
    again = await fb.get(f"/v2/{pkg.business}/blobs/{last['digest']}")
    assert await again.read() == layer
    head = await fb.head(f"/v2/{pkg.business}/blobs/{last['digest']}")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(layer)
    readme = layer.index(FILES["README.md"])
    for header, (start, end) in [("bytes=0-99", (0, 99)), (f"bytes={readme - 10}-{readme + 40}", (readme - 10, readme + 40)),
                                 ("bytes=-1500", (len(layer) - 1500, len(layer) - 1)), ("bytes=700-", (700, len(layer) - 1))]:
        resp = await fb.get(f"/v2/{pkg.business}/blobs/{last['digest']}", headers={"Range": header})
        assert resp.status == 206, header
        assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(layer)}"
        assert await resp.read() == layer[start : end + 1]
    resp = await fb.get(f"/v2/{pkg.business}/blobs/{last['digest']}", headers={"Range": f"bytes={len(layer)}-"})
    assert resp.status == 416

    host = f"127.0.0.1:{fb.server.port}"
    ref = f"docker://{host}/{pkg.business}:1.0-soft-image"
    copied = await run(SKOPEO, "copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'dir'}")
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "dir" / last["digest"].split(":")[1]).read_bytes() == layer
    # The unpacked root filesystem has the runtime, the sealed model and the package.
    files = rootfs([(tmp_path / "dir" / l["digest"].split(":")[1]).read_bytes() for l in image["layers"]])
    assert files["/usr/bin/run"].startswith(b"#!/bin/sh")
    assert files["/opt/app/config.yaml"] == b"threshold: 1"
    assert files["/algomint/package/README.md"] == FILES["README.md"]
    assert files["/algomint/package/form.json"] == FILES["form.json"]
    assert "/opt/models/face.onnx" in files and files["/opt/models/face.onnx"][:4] != b"\0\0\0\0"
    copied = await run(SKOPEO, "copy", "--src-tls-verify=false", "--dest-oci-accept-uncompressed-layers", ref,
                       f"oci:{tmp_path / 'oci'}:x")
    assert copied.returncode == 0, copied.stderr
    layout = json.loads((tmp_path / "oci" / "index.json").read_text())
    assert layout["manifests"][0]["digest"] == digest  # nothing re-encoded: the same image

    if PODMAN is None:
        pytest.skip("podman is not installed")
    podman = Podman(tmp_path / "podman")
    try:
        code, out = await podman("pull", "--tls-verify=false", f"{host}/{pkg.business}:1.0-soft-image")
        assert code == 0, out
        code, out = await podman("image", "inspect", f"{host}/{pkg.business}:1.0-soft-image")
        assert code == 0, out
        assert json.loads(out)[0]["RootFS"]["Layers"] == config["rootfs"]["diff_ids"]
        if "/bin/ls" not in files:
            pytest.skip("no ls binary on this machine to run in the image")
        code, out = await podman("run", "--rm", "--network", "none", f"{host}/{pkg.business}:1.0-soft-image",
                                 "/bin/ls", "/algomint/package")
        if code != 0 and ("permission denied" in out.lower() or "operation not permitted" in out.lower()):
            pytest.skip(f"this machine's sandbox stops podman run ({out.strip()[-200:]}); "
                        "the unpacked root filesystem was checked above")
        assert code == 0, out
        assert out.split() == sorted(["README.md", "form.json", "models"])
    finally:
        podman.close()


async def test_archive_offers_the_runnable_image(fb, tmp_path):
    pkg, _, image, digest, layer = await _built(fb)
    url = f"/api/v1/archive/{pkg.business}:1.0-soft-image"
    first = await fb.get(url)
    assert first.status == 200, await first.text()
    archive = await first.read()
    assert await (await fb.get(url)).read() == archive  # two downloads, the same bytes
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        inside = tar.extractfile(f"blobs/sha256/{image['layers'][-1]['digest'].split(':')[1]}").read()
        config = tar.extractfile(f"blobs/sha256/{image['config']['digest'].split(':')[1]}").read()
        index = json.loads(tar.extractfile("index.json").read())
    assert inside == layer and digest_of(config) == image["config"]["digest"]
    assert index["manifests"][0]["digest"] == digest
    # A range across the synthesised layer.
    start = archive.index(layer[:2048])
    resp = await fb.get(url, headers={"Range": f"bytes={start - 100}-{start + 5000}"})
    assert resp.status == 206 and await resp.read() == archive[start - 100 : start + 5001]
    path = tmp_path / "runnable.tar"
    path.write_bytes(archive)
    copied = await run(SKOPEO, "copy", f"oci-archive:{path}:{pkg.business}:1.0-soft-image", f"dir:{tmp_path / 'dir'}")
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "dir" / image["layers"][-1]["digest"].split(":")[1]).read_bytes() == layer


# -- tampering, freezes, garbage collection --------------------------------------------------
def _blob_path(fb, backend_kind: str, request, digest: str) -> Path:
    hexd = digest.split(":")[1]
    if backend_kind == "registry":
        root = request.getfixturevalue("distribution").root
        return root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"
    return fb.server.app[REGISTRY].backend.root / "blobs" / "sha256" / hexd[:2] / hexd


async def test_a_changed_thin_blob_is_never_served_as_the_layer(aiohttp_client, tmp_path, backend_kind, request,
                                                                 keys):  # noqa: F811
    """A whole read is checked against the recorded digest whatever the storage says; a
    range against each blob it touches where reads are verified (``always``: the
    registry backend's default, set here for the embedded store too)."""
    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    fb = await aiohttp_client(create_app(make_config(
        tmp_path, backend_kind, dist, storage_verify_reads="always",
        licenses__soft={"scheme": "x25519", "public_key": str(keys["public"]), "chunk_size": 4096})))
    pkg, _, image, _, layer = await _built(fb)
    last = image["layers"][-1]["digest"]
    path = _blob_path(fb, backend_kind, request, digest_of(FILES["form.json"]))
    assert path.read_bytes() == FILES["form.json"]
    path.chmod(0o644)
    path.write_bytes(b'{"door": fals}')  # same size, other bytes: what a hostile storage could do
    resp = await fb.get(f"/v2/{pkg.business}/blobs/{last}")
    assert resp.status == 200
    with pytest.raises(ClientPayloadError):
        await resp.read()  # aborted: never a clean end with wrong bytes
    at = layer.index(FILES["form.json"])
    resp = await fb.get(f"/v2/{pkg.business}/blobs/{last}", headers={"Range": f"bytes={at - 600}-{at + 3}"})
    assert resp.status == 206
    with pytest.raises(ClientPayloadError):
        await resp.read()
    # Bytes that depend on no changed blob are still right.
    resp = await fb.get(f"/v2/{pkg.business}/blobs/{last}", headers={"Range": "bytes=0-511"})
    assert await resp.read() == layer[:512]
    path.write_bytes(FILES["form.json"])
    assert await (await fb.get(f"/v2/{pkg.business}/blobs/{last}")).read() == layer


async def test_frozen_and_collected_like_the_full_package(fb, backend_kind):
    pkg, _, image, digest, _ = await _built(fb)
    last = image["layers"][-1]["digest"]
    for path in (f"/v2/{pkg.business}/manifests/1.0-soft-image", f"/v2/{pkg.business}/manifests/{digest}",
                 f"/v2/{pkg.business}/blobs/{last}"):
        resp = await fb.delete(path)
        assert resp.status == 403 and await error_code(resp) == "DENIED", path
    # The name space is reserved: a thin tag can't take a runnable image's name.
    resp = await fb.put(f"/v2/{pkg.generic}/manifests/2.0-soft-image", data=b"{}", headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 400 and await error_code(resp) == "TAG_INVALID"
    resp = await fb.post("/api/v1/full-builds", json={"package": f"{pkg.business}:1.0-soft-image", "license": "soft"})
    assert resp.status == 422
    if backend_kind == "filesystem":
        await _gc(fb)
    # Listed with the storage's tags, in order, page by page.
    resp = await fb.get(f"/v2/{pkg.business}/tags/list")
    assert (await resp.json())["tags"] == ["1.0", "1.0-soft", "1.0-soft-image"]
    walked, last = [], None
    for _ in range(5):
        resp = await fb.get(f"/v2/{pkg.business}/tags/list", params={"n": "1", **({"last": last} if last else {})})
        page = (await resp.json())["tags"]
        walked += page
        if "Link" not in resp.headers:
            break
        last = page[-1]
    assert walked == ["1.0", "1.0-soft", "1.0-soft-image"]
    # Whatever was collected, HEAD, GET and the image agree.
    again, _ = await manifest(fb, pkg.business, "1.0-soft-image")
    assert again == image
    for descriptor_ in [image["config"], *image["layers"]]:
        head = await fb.head(f"/v2/{pkg.business}/blobs/{descriptor_['digest']}")
        assert head.status == 200 and int(head.headers["Content-Length"]) == descriptor_["size"]
        await blob(fb, pkg.business, descriptor_["digest"])


# -- rights: exactly the full package's ----------------------------------------------------------
class _As:
    """A client whose requests carry ``headers`` (the helpers take none)."""

    def __init__(self, client, headers: dict[str, str]) -> None:
        self.client, self.headers, self.server = client, headers, client.server

    def __getattr__(self, method):
        call = getattr(self.client, method)
        return lambda *a, headers=None, **k: call(*a, headers={**self.headers, **(headers or {})}, **k)


async def test_who_may_pull_the_full_package_may_pull_the_layer_and_no_one_else(aiohttp_client, tmp_path, backend_kind,
                                                                                 request, keys):  # noqa: F811
    from tests.support.auth import ADMIN, AuthEnv, auth_config, basic

    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    client = await aiohttp_client(create_app(auth_config(
        tmp_path, backend_kind, dist,
        licenses__soft={"scheme": "x25519", "public_key": str(keys["public"]), "chunk_size": 4096})))
    env = AuthEnv(client, client.server.app)
    uid = uuid.uuid4().hex[:8]
    admin = _As(client, basic(ADMIN))
    pkg = await make_runnable_package(admin, uid, system=f"door{uid}")
    await run_build(admin, pkg.name)
    image, digest = await manifest(admin, pkg.business, "1.0-soft-image")
    layer, config = image["layers"][-1]["digest"], image["config"]["digest"]
    grants = {"door": [("consumer", f"business/door{uid}/**")],
              "lobby": [("consumer", f"business/lobby{uid}/**"), ("algorithm-dev", f"images/lobby{uid}/**")]}
    for user, pairs in grants.items():
        await env.create_user(f"{user}{uid}", [])
        for role, pattern in pairs:
            resp = await client.post("/api/v1/grants", json={"subject": f"{user}{uid}", "role": role, "pattern": pattern},
                                     headers=basic(ADMIN))
            assert resp.status == 201, await resp.text()
    door, lobby = basic(f"door{uid}"), basic(f"lobby{uid}")

    # Who may pull the full package pulls the runnable image whole.
    for path in ("manifests/1.0-soft", "manifests/1.0-soft-image", f"blobs/{layer}", f"blobs/{config}"):
        resp = await client.get(f"/v2/{pkg.business}/{path}", headers={**door, **ACCEPT})
        assert resp.status == 200, (path, await resp.text())
    # Anyone else: not by tag, not by digest, not by HEAD, not in the archive.
    for who, status in ((lobby, 403), ({}, 401)):
        for method, path in (("GET", "manifests/1.0-soft-image"), ("GET", f"manifests/{digest}"),
                             ("GET", f"blobs/{layer}"), ("HEAD", f"blobs/{layer}"), ("GET", f"blobs/{config}")):
            resp = await client.request(method, f"/v2/{pkg.business}/{path}", headers={**who, **ACCEPT})
            assert resp.status == status, (who, method, path)
        resp = await client.get(f"/api/v1/archive/{pkg.business}:1.0-soft-image", headers=who)
        assert resp.status == status
    # Nor through a repository of its own: the layer exists only where it was built.
    own = f"business/lobby{uid}/x"
    for path in (f"blobs/{layer}", f"blobs/{config}"):
        resp = await client.get(f"/v2/{own}/{path}", headers=lobby)
        assert resp.status == 404 and await error_code(resp) == "BLOB_UNKNOWN"
    resp = await client.get(f"/v2/{own}/manifests/{digest}", headers={**lobby, **ACCEPT})
    assert resp.status == 404
    # A cross-repository mount of it is an ordinary upload session, not a copy.
    target = f"images/lobby{uid}/x"
    for what in (layer, config):
        resp = await client.post(f"/v2/{target}/blobs/uploads/?mount={what}&from={pkg.business}", headers=lobby)
        assert resp.status == 202, await resp.text()
        resp = await client.head(f"/v2/{target}/blobs/{what}", headers=lobby)
        assert resp.status == 404


# -- the layout itself ---------------------------------------------------------------------------
async def test_layout_is_a_valid_deterministic_tar(tmp_path):
    backend = FilesystemBackend(tmp_path / "store")
    await backend.start()
    try:
        repo = "business/x/y"
        config = b'{"name":"y"}'
        files = {"b.txt": b"b" * 700, "a/" + "deep/" * 30 + "f.bin": os.urandom(5000), "empty": b"",
                 "dir": gzip.compress(b"packed")}
        for data in [config, *files.values()]:
            await put_blob(backend, repo, data)
        layers = [{"mediaType": "application/octet-stream", "digest": digest_of(d), "size": len(d),
                   "annotations": {mt.ANNOTATION_TITLE: n,
                                   **({"io.deis.oras.content.unpack": "true"} if n == "dir" else {})}}
                  for n, d in files.items()]
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.BUSINESS,
               "config": {"mediaType": mt.ALGORITHM_CONFIG, "digest": digest_of(config), "size": len(config)},
               "layers": layers}
        data = json.dumps(doc).encode()
        thin = ManifestData(digest_of(data), mt.OCI_MANIFEST, data)
        layout = layer_layout(thin)
        out = b"".join([c async for c in stream_layer(backend, repo, layout)])
        assert len(out) == layout.size and out == b"".join([c async for c in stream_layer(backend, repo, layer_layout(thin))])
        digest = digest_of(out)
        # With the recorded digest: the same bytes; with a wrong one, the stream fails before its end.
        assert b"".join([c async for c in stream_layer(backend, repo, layout, expected=digest)]) == out
        got = []
        with pytest.raises(Exception, match="does not match its recorded digest"):
            async for c in stream_layer(backend, repo, layout, expected="sha256:" + "0" * 64):
                got.append(c)
        assert len(b"".join(got)) < len(out)
        entries = members(out)
        assert entries[DESCRIPTOR_FILE][1] == config
        assert entries["algomint/package/" + "a/" + "deep/" * 30 + "f.bin"][1] == files["a/" + "deep/" * 30 + "f.bin"]
        assert entries["algomint/package/dir.tar.gz"][1] == files["dir"]
        assert entries["algomint/package/empty"][1] == b""
        assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.uname == "" for i, _ in entries.values())
        assert {i.mode for i, _ in entries.values() if i.isdir()} == {0o755}
        assert {i.mode for i, _ in entries.values() if i.isfile()} == {0o644}
        # Hostile manifests: a clash or an unsafe path is refused, not laid out.
        for bad in ([{**layers[0]}, {**layers[0]}],
                    [{**layers[0], "annotations": {mt.ANNOTATION_TITLE: "../etc/passwd"}}],
                    [{**layers[0], "annotations": {}}],
                    [{**layers[0], "annotations": {mt.ANNOTATION_TITLE: "a"}},
                     {**layers[1], "annotations": {mt.ANNOTATION_TITLE: "a/b"}}]):
            raw = json.dumps({**doc, "layers": bad}).encode()
            with pytest.raises(LayoutError):
                layer_layout(ManifestData(digest_of(raw), mt.OCI_MANIFEST, raw))
    finally:
        await backend.close()


async def test_the_layer_is_the_same_after_a_restart_and_a_second_build_pass(aiohttp_client, tmp_path, keys):  # noqa: F811
    """Laid out again by a new process, the layer has the recorded bytes; building the
    runnable images again from the same licensed package gives the same digests."""
    config = make_config(tmp_path, "filesystem",
                         licenses__soft={"scheme": "x25519", "public_key": str(keys["public"]), "chunk_size": 4096})
    fb = await aiohttp_client(create_app(config))
    pkg, build, image, digest, layer = await _built(fb)
    await fb.close()
    fb = await aiohttp_client(create_app(config))
    assert await blob(fb, pkg.business, image["layers"][-1]["digest"]) == layer
    index, _ = await manifest(fb, pkg.business, "1.0-soft")
    service = fb.server.app[REGISTRY]
    runnable = fb.server.app[FULL_BUILDS].builder.runnable
    licensed = await service.get_manifest(pkg.business, index["manifests"][1]["digest"])
    thin = await service.get_manifest(pkg.business, index["manifests"][0]["digest"])
    facts, roots = await runnable.build(pkg.business, thin, build["id"], [(licensed, [licensed])],
                                        fb.server.app[FULL_BUILDS].builder.rights.small_blob)
    assert facts == build["result"]["runnable"]["layer"]
    assert [r.digest for r in roots] == [digest]


async def test_an_index_runtime_image_gives_a_runnable_index(fb, tmp_path):
    """Each platform's licensed manifest gets the package layer; the index keeps platforms."""
    uid = uuid.uuid4().hex[:10]
    repo = f"images/multi{uid}"
    children = []
    for arch in ("amd64", "arm64"):
        image = runnable_source_image()
        config = json.loads(image.config)
        config["architecture"] = arch
        image = type(image)(image.layers, json.dumps(config).encode(), b"")
        doc = json.loads(_assemble(image.layers).manifest)
        doc["config"] = {"mediaType": mt.OCI_CONFIG, "digest": digest_of(image.config), "size": len(image.config)}
        image = type(image)(image.layers, image.config, json.dumps(doc).encode())
        await push_image(fb, repo, image, tag=image.digest)
        children.append({"mediaType": mt.OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest),
                         "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": children}).encode()
    resp = await fb.put(f"/v2/{repo}/manifests/v1", data=index, headers={"Content-Type": mt.OCI_INDEX})
    assert resp.status == 201, await resp.text()
    business = f"business/door/multi{uid}"
    await write_business(fb, business, "1.0", descriptor(f"{repo}:v1"), {"README.md": b"multi\n"})
    build = await run_build(fb, f"{business}:1.0")
    runnable, digest = await manifest(fb, business, "1.0-soft-image")
    licensed, _ = await manifest(fb, repo, "v1-soft")
    assert runnable["mediaType"] == mt.OCI_INDEX and build["result"]["runnable"]["images"][0]["digest"] == digest
    assert [m["platform"] for m in runnable["manifests"]] == [m["platform"] for m in licensed["manifests"]]
    layer = build["result"]["runnable"]["layer"]["digest"]
    for child, source in zip(runnable["manifests"], licensed["manifests"], strict=True):
        image, _ = await manifest(fb, business, child["digest"])
        source_image, _ = await manifest(fb, repo, source["digest"])
        assert image["layers"] == [*source_image["layers"], {"mediaType": mt.OCI_LAYER_TAR, "digest": layer,
                                                             "size": build["result"]["runnable"]["layer"]["size"]}]
    host = f"127.0.0.1:{fb.server.port}"
    out = await run(SKOPEO, "copy", "--src-tls-verify=false", "--override-os", "linux", "--override-arch", "arm64",
                    f"docker://{host}/{business}:1.0-soft-image", f"dir:{tmp_path / 'arm'}")
    assert out.returncode == 0, out.stderr
    assert members((tmp_path / "arm" / layer.split(":")[1]).read_bytes())["algomint/package/README.md"][1] == b"multi\n"
