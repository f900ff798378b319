"""Licensers: wrap a data key into a license file, and unwrap it with private material.

A license file is JSON the runtime reads (``format = "algomint-license/1"``)::

    {"format", "kind", "scheme", "keyId", "recipient", "dongleId"?,
     "ephemeralPublicKey", "nonce", "wrappedKey"}

Built-in schemes (ECIES-like, all with ``cryptography``):

- ``x25519`` (soft licenses): an ephemeral X25519 key agrees a secret with the
  configured recipient public key; ``HKDF-SHA256(secret, salt = ephemeral || recipient,
  info = "algomint-license/1|<scheme>|<dongle id>")`` gives the key that seals the data
  key with AES-256-GCM; the associated data binds format, kind, scheme, key id, recipient
  and dongle id, so none of them can be edited.
- ``dongle`` (hard licenses): the same, with the dongle's identity in both the HKDF info
  and the associated data. The recipient key pair lives in the dongle; the runtime asks
  the dongle for the key agreement and supplies the dongle's own id, so a license
  issued for one dongle cannot be opened with another's id even if the key is shared.
- ``plugin``: ``factory = "module:callable"`` is called with ``(kind, options)`` and must
  return a ``Licenser``; this is where a vendor dongle SDK plugs in.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .keys import KeyMaterialError, fingerprint, load_public_key, public_bytes
from .settings import LicenseConfig

__all__ = [
    "FORMAT",
    "LicenseError",
    "Licenser",
    "NoLicenser",
    "X25519Licenser",
    "DongleLicenser",
    "PrivateMaterial",
    "build_licenser",
    "build_licensers",
    "read_license",
    "unwrap_license",
]

FORMAT = "algomint-license/1"
MAX_LICENSE_BYTES = 64 * 1024


class LicenseError(Exception):
    """A license kind that cannot be set up, or a license file that cannot be opened."""


@dataclass(frozen=True)
class PrivateMaterial:
    """What the license holder has: the recipient private key and, for hard licenses,
    the dongle's identity as the dongle reports it."""

    private_key: X25519PrivateKey | None = None
    dongle_id: str | None = None


class Licenser(ABC):
    """Wraps per-build data keys for one license kind."""

    kind: str
    scheme: str
    #: False for ``full``: nothing is encrypted and no license file is written.
    encrypts: bool = True

    @abstractmethod
    def wrap(self, data_key: bytes, key_id: bytes) -> bytes:
        """The license file (bytes) that lets the license holder recover ``data_key``."""

    def unwrap(self, license_file: bytes, private: PrivateMaterial) -> tuple[bytes, bytes]:
        """``(key_id, data_key)`` from a license file written by ``wrap``."""
        return unwrap_license(license_file, private)

    def describe(self) -> dict[str, Any]:
        """License info for the descriptor of a full package (no secrets)."""
        return {"kind": self.kind, "scheme": self.scheme}


class NoLicenser(Licenser):
    encrypts = False

    def __init__(self, kind: str) -> None:
        self.kind, self.scheme = kind, "none"

    def wrap(self, data_key: bytes, key_id: bytes) -> bytes:
        raise LicenseError(f"license kind {self.kind!r} does not encrypt")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise LicenseError(f"license file: {field} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise LicenseError(f"license file: {field} is not valid base64") from None


def _context(doc: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """(HKDF info, AEAD associated data) binding every field that names the license."""
    dongle = doc.get("dongleId") or ""
    info = f"{FORMAT}|{doc['scheme']}|{dongle}".encode()
    aad = json.dumps(
        [doc["format"], doc["kind"], doc["scheme"], doc["keyId"], doc["recipient"], dongle], separators=(",", ":")
    ).encode()
    return info, aad


def _derive(secret: bytes, ephemeral: bytes, recipient: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=info).derive(secret)


class X25519Licenser(Licenser):
    scheme = "x25519"

    def __init__(self, kind: str, public_key: X25519PublicKey) -> None:
        self.kind = kind
        self.public_key = public_key
        self.recipient = fingerprint(public_key)

    def _extra(self) -> dict[str, Any]:
        return {}

    def wrap(self, data_key: bytes, key_id: bytes) -> bytes:
        ephemeral = X25519PrivateKey.generate()
        eph_pub = public_bytes(ephemeral.public_key())
        doc: dict[str, Any] = {
            "format": FORMAT,
            "kind": self.kind,
            "scheme": self.scheme,
            "keyId": key_id.hex(),
            "recipient": self.recipient,
            **self._extra(),
        }
        info, aad = _context(doc)
        wrap_key = _derive(ephemeral.exchange(self.public_key), eph_pub, public_bytes(self.public_key), info)
        nonce = os.urandom(12)
        doc["ephemeralPublicKey"] = _b64(eph_pub)
        doc["nonce"] = _b64(nonce)
        doc["wrappedKey"] = _b64(AESGCM(wrap_key).encrypt(nonce, data_key, aad))
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "recipient": self.recipient, **self._extra()}


class DongleLicenser(X25519Licenser):
    scheme = "dongle"

    def __init__(self, kind: str, public_key: X25519PublicKey, dongle_id: str) -> None:
        super().__init__(kind, public_key)
        self.dongle_id = dongle_id

    def _extra(self) -> dict[str, Any]:
        return {"dongleId": self.dongle_id}


def read_license(data: bytes) -> dict[str, Any]:
    """Parse and check the shape of a license file."""
    if len(data) > MAX_LICENSE_BYTES:
        raise LicenseError("license file too large")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LicenseError(f"license file is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LicenseError(f"not an {FORMAT} license file")
    for field in ("kind", "scheme", "keyId", "recipient"):
        if not isinstance(doc.get(field), str):
            raise LicenseError(f"license file: {field} missing")
    return doc


def unwrap_license(license_file: bytes, private: PrivateMaterial) -> tuple[bytes, bytes]:
    """``(key_id, data_key)`` from a built-in scheme's license file."""
    doc = read_license(license_file)
    scheme = doc["scheme"]
    if scheme not in ("x25519", "dongle"):
        raise LicenseError(f"license scheme {scheme!r} is opened by its vendor runtime, not here")
    if private.private_key is None:
        raise LicenseError("a license private key is required")
    recipient_pub = private.private_key.public_key()
    if fingerprint(recipient_pub) != doc["recipient"]:
        raise LicenseError(f"this license is for key {doc['recipient']}, not {fingerprint(recipient_pub)}")
    if scheme == "dongle":
        if not private.dongle_id:
            raise LicenseError("this license is bound to a dongle: its dongle id is required")
        # The id the dongle reports is what counts, never the one written in the file.
        doc = {**doc, "dongleId": private.dongle_id}
    try:
        key_id = bytes.fromhex(doc["keyId"])
    except ValueError:
        raise LicenseError("license file: keyId is not hex") from None
    eph_pub = _unb64(doc.get("ephemeralPublicKey"), "ephemeralPublicKey")
    nonce = _unb64(doc.get("nonce"), "nonce")
    wrapped = _unb64(doc.get("wrappedKey"), "wrappedKey")
    try:
        ephemeral = X25519PublicKey.from_public_bytes(eph_pub)
    except ValueError:
        raise LicenseError("license file: bad ephemeral public key") from None
    info, aad = _context(doc)
    wrap_key = _derive(private.private_key.exchange(ephemeral), eph_pub, public_bytes(recipient_pub), info)
    try:
        data_key = AESGCM(wrap_key).decrypt(nonce, wrapped, aad)
    except (InvalidTag, ValueError):
        raise LicenseError("license does not open with this key (wrong key, wrong dongle, or edited file)") from None
    return key_id, data_key


def build_licenser(kind: str, config: LicenseConfig) -> Licenser:
    """The licenser for one configured kind; ``LicenseError`` names what is wrong."""
    try:
        if config.scheme == "none":
            return NoLicenser(kind)
        if config.scheme == "plugin":
            assert config.factory is not None
            module, _, name = config.factory.partition(":")
            factory = getattr(importlib.import_module(module), name)
            licenser = factory(kind, dict(config.options))
            if not isinstance(licenser, Licenser):
                raise LicenseError(f"licenses.{kind}: {config.factory} did not return a Licenser")
            return licenser
        assert config.public_key is not None
        public = load_public_key(config.public_key)
        if config.scheme == "dongle":
            assert config.dongle_id is not None
            return DongleLicenser(kind, public, config.dongle_id)
        return X25519Licenser(kind, public)
    except KeyMaterialError as exc:
        raise LicenseError(f"licenses.{kind}: {exc}") from None
    except (ImportError, AttributeError) as exc:
        raise LicenseError(f"licenses.{kind}: cannot load factory {config.factory}: {exc}") from None


def build_licensers(configs: Mapping[str, LicenseConfig]) -> dict[str, Licenser]:
    return {kind: build_licenser(kind, cfg) for kind, cfg in configs.items()}
