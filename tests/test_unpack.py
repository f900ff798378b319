"""``algomint unpack`` on hostile archives: paths that leave the output directory,
duplicate paths and blobs that fail their digest are refused."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from packer.unpack import UnpackError, unpack_archive
from proxy.cli import main as cli_main
from proxy.oci import mediatypes as mt


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layout(tmp_path: Path, files: list[tuple[str, bytes]], corrupt: str | None = None) -> Path:
    config = b'{"name":"e","version":"1"}'
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.BUSINESS,
        "config": {"mediaType": mt.ALGORITHM_CONFIG, "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/octet-stream", "digest": digest(d), "size": len(d),
                    "annotations": {mt.ANNOTATION_TITLE: t}} for t, d in files],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": digest(manifest), "size": len(manifest)}]}).encode()
    path = tmp_path / "pkg.tar"
    with tarfile.open(path, "w") as tar:
        entries = [("index.json", index), *((f"blobs/sha256/{digest(b)[7:]}", b) for b in
                                            [manifest, config, *(d for _, d in files)])]
        for name, data in entries:
            if corrupt is not None and data == corrupt.encode():
                data = data[:-1] + b"!"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_files_are_written_at_their_paths(tmp_path):
    archive = layout(tmp_path, [("bin/run", b"elf"), ("model/a.rknn", b"sealed")])
    out = tmp_path / "out"
    assert unpack_archive(archive, out, tmp_path / "d.json") == ["bin/run", "model/a.rknn"]
    assert (out / "model/a.rknn").read_bytes() == b"sealed"
    assert json.loads((tmp_path / "d.json").read_text())["name"] == "e"


@pytest.mark.parametrize("files, corrupt, message", [
    ([("../escape", b"x")], None, "traversal"),
    ([("/etc/passwd", b"x")], None, "absolute"),
    ([("a", b"x"), ("a", b"y")], None, "same path"),
    ([("model/a.rknn", b"sealed bytes")], "sealed bytes", "digest"),
])
def test_hostile_archives_are_refused(tmp_path, files, corrupt, message):
    archive = layout(tmp_path, files, corrupt)
    with pytest.raises(UnpackError, match=message):
        unpack_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escape").exists()
    assert cli_main(["unpack", str(archive), "--output", str(tmp_path / "out")]) == 1


def test_a_symlink_in_the_output_does_not_lead_outside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model").symlink_to(tmp_path / "elsewhere")
    archive = layout(tmp_path, [("model/a.rknn", b"x")])
    with pytest.raises(UnpackError, match="outside"):
        unpack_archive(archive, out)
