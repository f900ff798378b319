"""X25519 key pairs for license wrapping: generate, load (PEM or raw base64), fingerprint."""

from __future__ import annotations

import base64
import contextlib
import binascii
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

__all__ = ["KeyMaterialError", "generate_keypair", "load_private_key", "load_public_key", "public_bytes", "fingerprint",
           "write_key_file"]


class KeyMaterialError(ValueError):
    """A key that cannot be read or is not an X25519 key."""


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    private = X25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def _material(value: str | bytes | Path) -> bytes:
    """Key text given inline, or read from a file when ``value`` names one."""
    if isinstance(value, Path):
        try:
            return value.read_bytes()
        except OSError as exc:
            raise KeyMaterialError(f"cannot read key file {value}: {exc.strerror}") from None
    raw = value.encode() if isinstance(value, str) else value
    stripped = raw.strip()
    if stripped.startswith(b"-----BEGIN"):
        return stripped
    try:
        decoded = base64.b64decode(stripped, validate=True)
        if len(decoded) == 32:
            return decoded
    except (binascii.Error, ValueError):
        pass
    path = Path(raw.decode(errors="replace"))
    if len(raw) < 4096 and path.is_file():
        return _material(path)
    raise KeyMaterialError("key is neither PEM, base64 of 32 raw bytes, nor a readable file")


def load_public_key(value: str | bytes | Path) -> X25519PublicKey:
    data = _material(value)
    try:
        if len(data) == 32:
            return X25519PublicKey.from_public_bytes(data)
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyMaterialError(f"invalid public key: {exc}") from None
    if not isinstance(key, X25519PublicKey):
        raise KeyMaterialError("public key is not an X25519 key")
    return key


def load_private_key(value: str | bytes | Path) -> X25519PrivateKey:
    data = _material(value)
    try:
        if len(data) == 32:
            return X25519PrivateKey.from_private_bytes(data)
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"invalid private key: {exc}") from None
    if not isinstance(key, X25519PrivateKey):
        raise KeyMaterialError("private key is not an X25519 key")
    return key


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: X25519PublicKey) -> str:
    """Short stable name of a public key: sha256 of its raw bytes, first 16 hex digits."""
    return hashlib.sha256(public_bytes(key)).hexdigest()[:16]


def write_key_file(path: Path, data: bytes, *, mode: int = 0o600, replace: bool = False) -> None:
    """Write ``path`` atomically, created with ``mode`` (never readable by others in between).

    The bytes go to a new file created with that mode in the same directory, which then takes
    the name: a reader sees the old file or the whole new one, and a key never exists with
    wider permissions, not even for an instant. Without ``replace`` an existing file is an
    error (``FileExistsError``)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the name exists: nothing is overwritten
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
