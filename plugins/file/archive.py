"""Expanding a directory layer (a tar, optionally gzipped, as ``oras push dir/`` makes)."""

from __future__ import annotations

import io
import tarfile
import zlib

from packer.package import PackageError, validate_path

__all__ = ["UNPACK_ANNOTATION", "expand"]

# The ORAS convention marking a layer that is a packed directory.
UNPACK_ANNOTATION = "io.deis.oras.content.unpack"


def expand(data: bytes, target: str, cap: int) -> dict[str, bytes]:
    """Regular files of the archive, keyed by package path under ``target``.

    The archive's top directory is replaced by ``target``. Links (symbolic or hard),
    devices and FIFOs are refused: nothing may point outside the package."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = _gunzip_capped(data, cap + cap // 8 + 1024 * 1024)  # room for tar headers
        except zlib.error as exc:
            raise PackageError(f"{target}: not a valid gzip archive: {exc}") from None
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                name = member.name.strip("/")
                if member.isdir() or not name:
                    continue
                if member.issym() or member.islnk():
                    raise PackageError(f"{target}: archive member {name!r} is a link to {member.linkname!r}; links are not allowed")
                if not member.isfile():
                    raise PackageError(f"{target}: archive member {name!r} is not a regular file")
                validate_path(name, f"{target}: archive member")
                rel = name.split("/", 1)[1] if "/" in name else name
                path = validate_path(f"{target}/{rel}", f"{target}: archive member")
                total += member.size
                if total > cap:
                    raise PackageError(f"{target}: archive expands past the {cap}-byte package cap")
                extracted = archive.extractfile(member)
                files[path] = extracted.read() if extracted is not None else b""
    except tarfile.TarError as exc:
        raise PackageError(f"{target}: not a valid tar archive: {exc}") from None
    return files


def _gunzip_capped(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    result = inflater.decompress(data, limit + 1)
    if len(result) > limit or inflater.unconsumed_tail:
        raise PackageError(f"archive expands past {limit} bytes")
    return result
