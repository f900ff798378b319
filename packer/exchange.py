"""The JSON form of a package that service and function plugins receive and return.

``{"descriptor": {...}, "annotations": {...}, "files": [{"path", "mediaType",
"annotations", "data": "<base64>"}]}``. What comes back from a plugin is untrusted input:
it is validated field by field (paths, types, base64, the size cap) before it becomes a
``Package``; the subject, artifact type and config media type are never taken from it."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .package import DEFAULT_FILE_MEDIA_TYPE, Package, PackageError, PackageFile, PackageTooLarge, validate_path

__all__ = ["package_to_document", "package_from_document", "document_limit"]


def package_to_document(package: Package) -> dict[str, Any]:
    return {
        "descriptor": package.descriptor,
        "annotations": package.annotations,
        "files": [
            {
                "path": f.path,
                "mediaType": f.media_type,
                "annotations": f.annotations,
                "data": base64.b64encode(f.data).decode("ascii"),
            }
            for f in sorted(package.files.values(), key=lambda f: f.path)
        ],
    }


def document_limit(cap: int) -> int:
    """Bytes a JSON document for a ``cap``-sized package may take (base64 + framing)."""
    return cap * 4 // 3 + 1024 * 1024


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise PackageError(f"{where}: must be an object of strings")
    return dict(value)


def package_from_document(document: Any, base: Package, cap: int) -> Package:
    """A validated ``Package`` from a plugin's answer; ``base`` supplies what it can't change."""
    if not isinstance(document, dict):
        raise PackageError("package: must be a JSON object")
    unknown = set(document) - {"descriptor", "annotations", "files"}
    if unknown:
        raise PackageError(f"package: unknown fields {sorted(unknown)}")
    descriptor = document.get("descriptor")
    if not isinstance(descriptor, dict):
        raise PackageError("package.descriptor: must be a JSON object")
    annotations = _string_map(document.get("annotations"), "package.annotations")
    raw_files = document.get("files", [])
    if not isinstance(raw_files, list):
        raise PackageError("package.files: must be a list")
    files: dict[str, PackageFile] = {}
    total = 0
    for i, item in enumerate(raw_files):
        where = f"package.files[{i}]"
        if not isinstance(item, dict):
            raise PackageError(f"{where}: must be an object")
        path = validate_path(item.get("path"), f"{where}.path")
        if path in files:
            raise PackageError(f"{where}.path: duplicate path {path!r}")
        media_type = item.get("mediaType", DEFAULT_FILE_MEDIA_TYPE)
        if not isinstance(media_type, str) or not media_type:
            raise PackageError(f"{where}.mediaType: must be a non-empty string")
        data = item.get("data")
        if not isinstance(data, str):
            raise PackageError(f"{where}.data: must be a base64 string")
        total += len(data) * 3 // 4
        if total > cap:
            raise PackageTooLarge(total, cap, "returned package")
        try:
            content = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise PackageError(f"{where}.data: not valid base64") from None
        files[path] = PackageFile(path, content, media_type, _string_map(item.get("annotations"), f"{where}.annotations"))
    result = Package(descriptor, files, annotations, base.artifact_type, base.config_media_type, base.subject)
    try:
        return result.check(cap)
    except PackageTooLarge as exc:
        raise PackageTooLarge(exc.size, exc.cap, "returned package") from None
