"""Build real runtime-image layers for full-build tests: every tar feature that must
survive a rewrite (hard links, whiteouts, long names, PAX records, GNU sparse files)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zstandard

from proxy.oci import mediatypes as mt

__all__ = ["Layer", "BuiltImage", "build_image", "with_layer", "tar_members", "raw_member_slices"]

MODELS = "opt/models/*.onnx"


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, **extra) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime, info.mode = size, kind, 1700000000, 0o644
    info.uid, info.gid, info.uname, info.gname = 1000, 1000, "dev", "dev"
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def _member(info: tarfile.TarInfo, data: bytes = b"", fmt: int = tarfile.GNU_FORMAT) -> bytes:
    out = info.tobuf(fmt, "utf-8", "surrogateescape") + data
    return out + b"\0" * (-len(data) % 512)


def _gnu_sparse_members(workdir: Path) -> bytes:
    """Members written by GNU tar: an old-GNU sparse file and a PAX 1.0 sparse file."""
    workdir.mkdir(parents=True, exist_ok=True)
    parts = []
    for fmt, extra in (("gnu", []), ("posix", ["--sparse-version=1.0"])):
        sparse = workdir / f"sparse-{fmt}.bin"
        with open(sparse, "wb") as f:
            f.truncate(3 * 1024 * 1024)
            f.seek(1024 * 1024)
            f.write(b"island" * 100)
        archive = workdir / f"{fmt}.tar"
        subprocess.run(["tar", f"--format={fmt}", *extra, "-S", "-C", str(workdir), "-cf", str(archive),
                        "--owner=0", "--group=0", "--mtime=@0", sparse.name], check=True)
        raw = archive.read_bytes()
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            tf.getmembers()
            end = tf.offset
        parts.append(raw[:end])
    return b"".join(parts)


@dataclass
class Layer:
    tar: bytes
    blob: bytes
    media_type: str
    models: dict[str, bytes]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.blob).hexdigest()

    @property
    def diff_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.tar).hexdigest()


def layer_with_models(workdir: Path, model_size: int = 300_000) -> tuple[bytes, dict[str, bytes]]:
    models = {"opt/models/face.onnx": os.urandom(model_size), "opt/models/empty.onnx": b""}
    parts = [
        _member(_info("opt/", kind=tarfile.DIRTYPE, mode=0o755)),
        _member(_info("opt/models/", kind=tarfile.DIRTYPE, mode=0o755)),
        _member(_info("opt/models/face.onnx", len(models["opt/models/face.onnx"])), models["opt/models/face.onnx"]),
        _member(_info("opt/models/empty.onnx")),
        # A hard link to a model file, and one to an ordinary file.
        _member(_info("opt/models/face-link.onnx", kind=tarfile.LNKTYPE, linkname="opt/models/face.onnx")),
        _member(_info("opt/app/config.yaml", 12), b"threshold: 1"),
        _member(_info("opt/app/config-link.yaml", kind=tarfile.LNKTYPE, linkname="opt/app/config.yaml")),
        _member(_info("opt/app/current", kind=tarfile.SYMTYPE, linkname="../models/face.onnx")),
        # Whiteouts: a deleted file and an opaque directory; one is named like a model.
        _member(_info("opt/models/.wh.old.onnx")),
        _member(_info("var/cache/.wh..wh..opq")),
        # A long name (GNU 'L') and PAX records (xattrs, a long path, a model with a PAX header).
        _member(_info("opt/app/" + "n" * 150 + ".txt", 5), b"long!"),
        _member(_info("opt/app/" + "p" * 120 + "/pax.txt", 3, pax_headers={"SCHILY.xattr.user.k": "v"}), b"pax",
                tarfile.PAX_FORMAT),
    ]
    pax_model = os.urandom(70_000)
    models["opt/models/pax-model.onnx"] = pax_model
    parts.append(_member(_info("opt/models/pax-model.onnx", len(pax_model),
                               pax_headers={"size": str(len(pax_model)), "comment": "ü"}), pax_model, tarfile.PAX_FORMAT))
    parts.append(_gnu_sparse_members(workdir / "sparse"))
    return b"".join(parts) + b"\0" * 10240, models


def plain_layer(files: dict[str, bytes]) -> bytes:
    parts = [_member(_info(name, len(data)), data, tarfile.PAX_FORMAT) for name, data in files.items()]
    return b"".join(parts) + b"\0" * 1024


@dataclass
class BuiltImage:
    layers: list[Layer]
    config: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def models(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for layer in self.layers:
            out.update(layer.models)
        return out


def _assemble(layers: list[Layer]) -> BuiltImage:
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/usr/bin/run"], "Labels": {"maintainer": "test"}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
        "layers": [{"mediaType": l.media_type, "digest": l.digest, "size": len(l.blob)} for l in layers],
    }).encode()
    return BuiltImage(layers, config, manifest)


def with_layer(image: BuiltImage, tar: bytes) -> BuiltImage:
    """The image with one more gzip layer holding ``tar`` as it is."""
    return _assemble([*image.layers, Layer(tar, gzip.compress(tar, mtime=0), mt.OCI_LAYER_GZIP, {})])


def build_image(workdir: Path, model_size: int = 300_000) -> BuiltImage:
    """Three layers: gzip base (no models), gzip with models and every tar feature, zstd with a model."""
    base = plain_layer({"etc/os-release": b"ID=test\n", "usr/bin/run": b"#!/bin/sh\necho run\n"})
    rich, models = layer_with_models(workdir, model_size)
    zmodel = os.urandom(50_000)
    ztar = plain_layer({"opt/models/extra.onnx": zmodel, "opt/app/readme.md": b"zstd layer\n"})
    layers = [
        Layer(base, gzip.compress(base, mtime=0), mt.OCI_LAYER_GZIP, {}),
        Layer(rich, gzip.compress(rich, mtime=0), mt.OCI_LAYER_GZIP, models),
        Layer(ztar, zstandard.ZstdCompressor().compress(ztar), mt.OCI_LAYER_ZSTD, {"opt/models/extra.onnx": zmodel}),
    ]
    return _assemble(layers)


def tar_members(tar: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return tf.getmembers()


def raw_member_slices(tar: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Each member with its raw bytes (extended headers, header, data, padding)."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = tf.getmembers()
        end = tf.offset
    bounds = [m.offset for m in members] + [end]
    return [(m, tar[bounds[i]:bounds[i + 1]]) for i, m in enumerate(members)]
