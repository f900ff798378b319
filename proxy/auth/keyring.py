"""The registry-token signing keys: a directory of ES256 (P-256) keys that can rotate.

Layout of ``[auth] signing_keys_dir`` (mode 0700):

- ``<active-from>-<tag>.key``: a private key (PKCS#8 PEM, mode 0600, written atomically);
  ``active-from`` is the Unix time in milliseconds from which it signs. The newest active key signs;
  every key in the directory verifies, so tokens signed before a rotation stay valid.
- ``<active-from>-<tag>.crt``: a self-signed X.509 certificate of the same public key,
  and ``bundle.pem``: all of them — what a backing registry's token auth takes as its
  ``rootcertbundle`` (distribution 2.x verifies with the public key alone).

Each key's ``kid`` is the libtrust key id of its public key (what distribution looks up
the certificate by), and the JWKS lists every key. ``rotate`` adds a key (optionally
active only later, so verifiers can fetch it first) and removes keys retired long enough
ago that no token they signed can still be valid. Servers re-read the directory every
few seconds and whenever a token names a key they do not hold, so replicas sharing the
directory pick up a rotation without a restart."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm

__all__ = ["SigningKey", "KeyRing", "rotate", "libtrust_kid", "BUNDLE"]

BUNDLE = "bundle.pem"
_KEY_RE = re.compile(r"^(\d{13,15})-([0-9a-f]{8})\.key$")
_RESCAN = 5.0  # seconds between directory scans
_CERT_YEARS = 10


@dataclass(frozen=True)
class SigningKey:
    kid: str
    active_from: float  # Unix time (millisecond precision)
    private: ec.EllipticCurvePrivateKey
    path: Path

    @property
    def public(self) -> ec.EllipticCurvePublicKey:
        return self.private.public_key()

    def jwk(self) -> dict[str, Any]:
        jwk = ECAlgorithm.to_jwk(self.public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}


def libtrust_kid(public: ec.EllipticCurvePublicKey) -> str:
    """The key id distribution (libtrust) gives a public key: base32 of the first 240 bits
    of the SHA-256 of its DER SubjectPublicKeyInfo, in groups of four joined by ':'."""
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i:i + 4] for i in range(0, len(text), 4))


class KeyRing:
    """The keys of one directory, re-read as it changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._keys: dict[str, SigningKey] = {}  # kid -> key
        self._files: set[str] = set()
        self._scanned = 0.0
        self._lock = threading.Lock()

    @classmethod
    def open(cls, directory: Path) -> "KeyRing":
        """The ring in ``directory``, with a first key created if it has none."""
        _private_dir(directory)
        ring = cls(directory)
        ring.scan()
        if not ring._keys:
            create_key(directory, time.time())
            ring.scan()
        return ring

    def scan(self) -> None:
        """Load new key files and forget removed ones."""
        with self._lock:
            self._scanned = time.monotonic()
            names = {n for n in os.listdir(self.directory) if _KEY_RE.match(n)}
            if names == self._files:
                return
            keys = {k.path.name: k for k in self._keys.values() if k.path.name in names}
            for name in names - set(keys):
                key = _load(self.directory / name)
                keys[name] = key
            self._keys = {k.kid: k for k in keys.values()}
            self._files = names

    def _fresh(self) -> None:
        if time.monotonic() - self._scanned > _RESCAN:
            self.scan()

    def signer(self, now: float | None = None) -> SigningKey:
        """The newest key already active (a first one is made if all were removed)."""
        self._fresh()
        now = time.time() if now is None else now
        if not self._keys:
            create_key(self.directory, now)
            self.scan()
        active = [k for k in self._keys.values() if k.active_from <= now]
        if not active:  # only future keys: the earliest (a clock set back)
            return min(self._keys.values(), key=lambda k: k.active_from)
        return max(active, key=lambda k: (k.active_from, k.kid))

    def verifier(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._scanned > 1.0:
            self.scan()  # a replica may have rotated: look once more, at most once a second
            key = self._keys.get(kid)
        return key.public if key is not None else None

    def has(self, kid: str | None) -> bool:
        """Whether ``kid`` is still in the ring (re-read every few seconds)."""
        self._fresh()
        return kid in self._keys

    def keys(self) -> list[SigningKey]:
        self._fresh()
        return sorted(self._keys.values(), key=lambda k: k.active_from)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys()]}

    def bundle(self) -> bytes:
        return b"".join(_cert_path(k.path).read_bytes() for k in self.keys() if _cert_path(k.path).exists())


def rotate(directory: Path, *, activate_in: float = 0, keep_retired: float, now: float | None = None) -> tuple[SigningKey, list[str]]:
    """Add a key active from ``now + activate_in`` and remove keys retired (superseded by
    an active key) more than ``keep_retired`` seconds ago. Returns the new key and the
    kids removed."""
    _private_dir(directory)
    now = time.time() if now is None else now
    ring = KeyRing(directory)
    ring.scan()
    # Strictly after every existing key, so the newest key is never ambiguous.
    latest = max((k.active_from for k in ring.keys()), default=0.0)
    new = create_key(directory, max(now + activate_in, latest + 0.001))
    ring.scan()
    keys = ring.keys()
    removed = []
    for older, newer in zip(keys, keys[1:]):
        if newer.active_from <= now and now - newer.active_from > keep_retired:
            for path in (older.path, _cert_path(older.path)):
                path.unlink(missing_ok=True)
            removed.append(older.kid)
    write_bundle(directory)
    return new, removed


def create_key(directory: Path, active_from: float) -> SigningKey:
    """A new private key and its certificate, written atomically (the key 0600)."""
    private = ec.generate_private_key(ec.SECP256R1())
    millis = int(active_from * 1000)
    active_from = millis / 1000
    name = f"{millis}-{secrets.token_hex(4)}"
    key_path = directory / f"{name}.key"
    cert = _certificate(private, active_from)
    _write_atomically(_cert_path(key_path), cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_atomically(key_path, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()), 0o600)
    write_bundle(directory)
    return SigningKey(libtrust_kid(private.public_key()), active_from, private, key_path)


def write_bundle(directory: Path) -> None:
    certs = sorted(p for p in directory.glob("*.crt") if (directory / (p.stem + ".key")).exists())
    _write_atomically(directory / BUNDLE, b"".join(p.read_bytes() for p in certs), 0o644)


def _load(path: Path) -> SigningKey:
    match = _KEY_RE.match(path.name)
    assert match is not None
    if path.stat().st_mode & 0o077:
        raise ValueError(f"{path}: a signing key must be readable by its owner only (chmod 600)")
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, ec.SECP256R1):
        raise ValueError(f"{path}: not a P-256 (ES256) private key")
    return SigningKey(libtrust_kid(private.public_key()), int(match.group(1)) / 1000, private, path)


def _certificate(private: ec.EllipticCurvePrivateKey, active_from: float) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "algomint registry token signer")])
    start = datetime.datetime.fromtimestamp(active_from, datetime.timezone.utc) - datetime.timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365 * _CERT_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(private, hashes.SHA256())
    )


def _cert_path(key_path: Path) -> Path:
    return key_path.with_suffix(".crt")


def _private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # an existing, wider directory is narrowed


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write to a temporary file created with ``mode`` (never wider), then rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widened
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
