"""Build small OCI image layouts on disk for real-client tests (skopeo reads them)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from proxy.oci import mediatypes as mt

__all__ = ["make_layer", "write_oci_layout"]


def make_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip tar layer with ``files``; returns (compressed bytes, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), "sha256:" + hashlib.sha256(uncompressed).hexdigest()


def _blob(root: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_oci_layout(root: Path, tag: str, layers: list[dict[str, bytes]]) -> str:
    """Write an OCI image layout holding one image; returns its manifest digest."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    built = [make_layer(files) for files in layers]
    layer_descs = [{"mediaType": mt.OCI_LAYER_GZIP, **_blob(root, data)} for data, _ in built]
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in built]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, **_blob(root, config)},
        "layers": layer_descs,
    }).encode()
    desc = {"mediaType": mt.OCI_MANIFEST, **_blob(root, manifest), "annotations": {mt.ANNOTATION_REF_NAME: tag}}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    return desc["digest"]
