"""The envelope format and the licensers, without HTTP."""

from __future__ import annotations

import io
import json
import os

import pytest

from packer.licensing import LicenseConfig, LicenseError, PrivateMaterial, build_licenser, unwrap_license
from packer.licensing.envelope import EnvelopeError, HEADER_SIZE, decrypt_stream, encrypt_stream, encrypted_size
from packer.licensing.keys import generate_keypair, load_private_key

KEY, KEY_ID = os.urandom(32), os.urandom(16)


def seal(data: bytes, chunk: int = 1024) -> bytes:
    out = io.BytesIO()
    assert encrypt_stream(io.BytesIO(data), out, KEY, KEY_ID, len(data), chunk) == encrypted_size(len(data), chunk)
    return out.getvalue()


def open_(sealed: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(sealed), out, {KEY_ID: key})
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 10_000])
def test_round_trip_sizes(size):
    data = os.urandom(size)
    sealed = seal(data)
    assert len(sealed) == encrypted_size(size, 1024) and open_(sealed) == data


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-1],  # truncated tag
        lambda s: s[: HEADER_SIZE + 1040],  # whole chunks dropped from the end
        lambda s: s + b"\0",  # appended bytes
        lambda s: s[:HEADER_SIZE] + s[HEADER_SIZE + 1040: HEADER_SIZE + 2080] + s[HEADER_SIZE: HEADER_SIZE + 1040] + s[HEADER_SIZE + 2080:],
        lambda s: s[:20] + bytes([s[20] ^ 1]) + s[21:],  # header (chunk size / key id)
        lambda s: s[:-5] + bytes([s[-5] ^ 1]) + s[-4:],  # ciphertext
        lambda s: s[:40] + (4000).to_bytes(8, "big") + s[48:],  # plain size edited
    ],
)
def test_tampering_is_detected(mangle):
    sealed = seal(os.urandom(5000))
    with pytest.raises(EnvelopeError):
        open_(mangle(sealed))


def test_wrong_key_and_not_an_envelope():
    sealed = seal(b"secret")
    with pytest.raises(EnvelopeError):
        open_(sealed, os.urandom(32))
    with pytest.raises(EnvelopeError, match="magic"):
        open_(b"plain text file" * 10)


def test_soft_and_hard_wrapping():
    private_pem, public_pem = generate_keypair()
    private = load_private_key(private_pem)
    soft = build_licenser("soft", LicenseConfig(scheme="x25519", public_key=public_pem.decode()))
    assert unwrap_license(soft.wrap(KEY, KEY_ID), PrivateMaterial(private)) == (KEY_ID, KEY)
    hard = build_licenser("hard", LicenseConfig(scheme="dongle", public_key=public_pem.decode(), dongle_id="D-1"))
    license_file = hard.wrap(KEY, KEY_ID)
    assert unwrap_license(license_file, PrivateMaterial(private, "D-1")) == (KEY_ID, KEY)
    for dongle in (None, "D-2"):
        with pytest.raises(LicenseError):
            unwrap_license(license_file, PrivateMaterial(private, dongle))
    other = load_private_key(generate_keypair()[0])
    with pytest.raises(LicenseError, match="for key"):
        unwrap_license(license_file, PrivateMaterial(other, "D-1"))
    edited = json.loads(license_file)
    edited["kind"] = "soft"
    with pytest.raises(LicenseError):
        unwrap_license(json.dumps(edited).encode(), PrivateMaterial(private, "D-1"))


def test_config_validation():
    from proxy.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="public_key"):
        load_config(None, environ={"ALGOMINT_LICENSES__SOFT__SCHEME": "x25519"})
    with pytest.raises(ConfigError, match="tag suffix"):
        load_config(None, environ={"ALGOMINT_LICENSES__SOFT_X__SCHEME": "none"})
    config = load_config(None, environ={"ALGOMINT_LICENSES__DEMO__SCHEME": "none"})
    assert set(config.licenses) == {"full", "demo"}
    with pytest.raises(LicenseError, match="invalid public key|neither"):
        build_licenser("soft", LicenseConfig(scheme="x25519", public_key="not-a-key"))
