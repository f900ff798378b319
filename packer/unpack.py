"""``algomint unpack``: write a package's files out of a delivered archive.

The archive (``GET /api/v1/archive/…``) is an OCI image layout in a tar. For a thin
package its root is the package's manifest; for a full package the root is the index
and the package is the entry whose ``artifactType`` is the business package (the
license-specific descriptor's manifest). Every file (layer) is written at its
``org.opencontainers.image.title``, streamed and checked against its digest; paths that
would leave the output directory are refused. This is what a device installer does
with an embedded package before its runtime opens the licensed model (``algomint
decrypt``, or the same envelope code linked into the runtime)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any

from proxy.oci import mediatypes as mt

from .package import PackageError, validate_path

__all__ = ["UnpackError", "register", "unpack_archive"]

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_MAX_JSON = 4 * 1024 * 1024
_COPY = 1024 * 1024


class UnpackError(Exception):
    """An archive that is not a package layout, or a file that fails its digest."""


class _Layout:
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar

    def open(self, digest: Any) -> tuple[IO[bytes], int]:
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise UnpackError(f"unsupported or malformed digest {str(digest)[:80]!r}")
        try:
            member = self.tar.getmember("blobs/sha256/" + digest.split(":", 1)[1])
        except KeyError:
            raise UnpackError(f"blob {digest} is not in the archive") from None
        stream = self.tar.extractfile(member) if member.isfile() else None
        if stream is None:
            raise UnpackError(f"blob {digest} is not a regular file")
        return stream, member.size

    def json(self, digest: Any) -> dict[str, Any]:
        stream, size = self.open(digest)
        if size > _MAX_JSON:
            raise UnpackError(f"manifest {digest} is {size} bytes; the limit is {_MAX_JSON}")
        data = stream.read()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise UnpackError(f"manifest {digest} fails its digest")
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise UnpackError(f"{digest} is not a JSON object")
        return doc


def _package_manifest(layout: _Layout, index: dict[str, Any]) -> dict[str, Any]:
    entries = index.get("manifests") or []
    if not entries:
        raise UnpackError("index.json names no manifest")
    root = layout.json(entries[0].get("digest"))
    if "layers" in root:
        return root
    for entry in root.get("manifests") or []:
        if entry.get("artifactType") == mt.BUSINESS:
            return layout.json(entry.get("digest"))
    raise UnpackError("the archive's root is an index without a package manifest (artifactType business)")


def unpack_archive(archive: Path, output: Path, descriptor: Path | None = None) -> list[str]:
    """Write the package's files under ``output``; returns their paths."""
    written: list[str] = []
    with tarfile.open(archive, "r:") as tar:
        layout = _Layout(tar)
        try:
            index_member = tar.extractfile("index.json")
        except KeyError:
            index_member = None
        if index_member is None:
            raise UnpackError("not an OCI image layout (no index.json)")
        manifest = _package_manifest(layout, json.loads(index_member.read(_MAX_JSON)))
        titles = []
        for position, layer in enumerate(manifest.get("layers") or []):
            title = (layer.get("annotations") or {}).get(mt.ANNOTATION_TITLE)
            try:
                titles.append(validate_path(title, f"layer {position} title"))
            except PackageError as exc:
                raise UnpackError(exc.reason) from None
        if len(set(titles)) != len(titles):
            raise UnpackError("two files of the package have the same path")
        output.mkdir(parents=True, exist_ok=True)
        base = output.resolve()
        for title, layer in zip(titles, manifest["layers"]):
            target = (output / title).resolve()
            if base not in target.parents:
                raise UnpackError(f"{title!r} would be written outside {output}")
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy(layout, layer.get("digest"), target)
            written.append(title)
        if descriptor is not None:
            config = manifest.get("config") or {}
            descriptor.write_text(json.dumps(layout.json(config.get("digest")), indent=2) + "\n")
    return written


def _copy(layout: _Layout, digest: Any, target: Path) -> None:
    stream, _ = layout.open(digest)
    hasher = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".unpack-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            while piece := stream.read(_COPY):
                hasher.update(piece)
                out.write(piece)
        if "sha256:" + hasher.hexdigest() != digest:
            raise UnpackError(f"{target.name}: blob {digest} fails its digest")
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def register(commands: argparse._SubParsersAction) -> None:
    unpack = commands.add_parser("unpack", help="write a package's files out of an archive (/api/v1/archive)")
    unpack.add_argument("archive", type=Path, help="the archive tar (uncompressed)")
    unpack.add_argument("--output", type=Path, required=True, help="directory to write the package's files into")
    unpack.add_argument("--descriptor", type=Path, help="also write the package's descriptor (JSON) here")
    unpack.set_defaults(func=_unpack)


def _unpack(args: argparse.Namespace) -> int:
    try:
        files = unpack_archive(args.archive, args.output, args.descriptor)
    except (UnpackError, OSError, tarfile.TarError, ValueError) as exc:
        print(f"algomint: {exc}", file=sys.stderr)
        return 1
    for path in files:
        print(path)
    return 0
