"""The package on disk for a job: unpacked into a fresh directory, read back with checks.

Layout under the job's directory (``ALGOMINT_WORKDIR``)::

    package/               the job's cwd (ALGOMINT_PACKAGE_DIR), changed in place
        algorithm.json     the descriptor
        annotations.json   manifest annotations
        files/<path>       one file per package file
    plugin/                the plugin artifact's files (ALGOMINT_PLUGIN_DIR)
    tmp/                   HOME and TMPDIR

Reading back refuses links, special files, paths that escape, anything written beside
these three directories, and packages over the cap."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from packer.package import DEFAULT_FILE_MEDIA_TYPE, Package, PackageError, PackageFile, PackageTooLarge, validate_path

__all__ = ["ENTRIES", "read_back", "unpack"]

ENTRIES = ("package", "plugin", "tmp")
_DESCRIPTOR = "algorithm.json"
_ANNOTATIONS = "annotations.json"


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def unpack(root: Path, package: Package, plugin_files: dict[str, PackageFile]) -> None:
    for name in ENTRIES:
        (root / name).mkdir()
    pkg = root / "package"
    _write(pkg / _DESCRIPTOR, (json.dumps(package.descriptor, ensure_ascii=False, indent=2) + "\n").encode())
    _write(pkg / _ANNOTATIONS, (json.dumps(package.annotations, ensure_ascii=False, indent=2) + "\n").encode())
    for path, file in package.files.items():
        _write(pkg / "files" / validate_path(path), file.data)
    for path, file in plugin_files.items():
        _write(root / "plugin" / validate_path(path), file.data, 0o755)
    (pkg / "files").mkdir(exist_ok=True)


def _load_json(path: Path, what: str) -> object:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise PackageError(f"the job removed {what}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PackageError(f"{what} is not a regular file (links are not allowed)")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{what} is not valid JSON: {exc}") from None


def _link_reason(path: Path, rel: str, root: Path) -> str:
    target = os.readlink(path)
    resolved = (path.parent / target).resolve()
    if not resolved.is_relative_to(root.resolve()):
        return f"link out of the work directory: files/{rel} -> {target}"
    return f"links are not allowed in packages: files/{rel} -> {target}"


def read_back(root: Path, base: Package, cap: int) -> Package:
    """The package as the job left it; ``PackageError`` says precisely what is wrong."""
    extra = sorted(set(os.listdir(root)) - set(ENTRIES))
    if extra:
        raise PackageError(f"the job wrote outside its work directory: {', '.join(extra[:5])}")
    pkg = root / "package"
    if os.path.islink(pkg) or os.path.islink(pkg / "files"):
        raise PackageError("the job replaced its package directory with a link")
    descriptor = _load_json(pkg / _DESCRIPTOR, _DESCRIPTOR)
    if not isinstance(descriptor, dict):
        raise PackageError(f"{_DESCRIPTOR} must hold a JSON object")
    annotations = _load_json(pkg / _ANNOTATIONS, _ANNOTATIONS) if os.path.lexists(pkg / _ANNOTATIONS) else {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise PackageError(f"{_ANNOTATIONS} must hold an object of strings")
    files: dict[str, PackageFile] = {}
    total = 0
    top = pkg / "files"
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            full = here / name
            rel = full.relative_to(top).as_posix()
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise PackageError(_link_reason(full, rel, root))
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise PackageError(f"files/{rel} is not a regular file")
            validate_path(rel, "file")
            total += st.st_size
            if total > cap:
                raise PackageTooLarge(total, cap, "package left by the job")
            old = base.files.get(rel)
            files[rel] = PackageFile(rel, full.read_bytes(), old.media_type if old else DEFAULT_FILE_MEDIA_TYPE,
                                     old.annotations if old else {})
    result = Package(descriptor, files, dict(annotations), base.artifact_type, base.config_media_type, base.subject)
    return result.check(cap)
