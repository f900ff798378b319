"""Licensing: authenticated chunked encryption of model files and data-key wrapping.

``envelope`` seals one file; ``licenser`` wraps the per-build data key into the license
file a runtime reads; ``keys`` makes and loads key pairs; ``cli`` is ``algomint keygen``
and ``algomint decrypt``."""

from .envelope import Decryptor, Encryptor, EnvelopeError, encrypted_size, is_envelope
from .licenser import (
    DongleLicenser,
    LicenseError,
    Licenser,
    NoLicenser,
    PrivateMaterial,
    X25519Licenser,
    build_licenser,
    build_licensers,
    read_license,
    unwrap_license,
)
from .settings import LicenseConfig, Licenses

__all__ = [
    "Decryptor",
    "DongleLicenser",
    "Encryptor",
    "EnvelopeError",
    "LicenseConfig",
    "LicenseError",
    "Licenser",
    "Licenses",
    "NoLicenser",
    "PrivateMaterial",
    "X25519Licenser",
    "build_licenser",
    "build_licensers",
    "encrypted_size",
    "is_envelope",
    "read_license",
    "unwrap_license",
]
