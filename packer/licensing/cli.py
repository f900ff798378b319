"""``algomint keygen`` and ``algomint decrypt``: make license keys and prove the round trip.

``decrypt`` finds the license file in the image's root filesystem or the unpacked
package (or takes
``--license``), unwraps the data key with the license private key (and, for hard
licenses, the dongle id), and opens every encrypted model file under the given path,
in place (atomically) or into ``--output``."""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .envelope import HEADER_SIZE, EnvelopeError, decrypt_stream, is_envelope
from .keys import (KeyMaterialError, fingerprint, generate_keypair, load_private_key, load_public_key, public_bytes,
                   write_key_file)
from .licenser import LicenseError, PrivateMaterial, unwrap_license
from .settings import LicenseConfig

__all__ = ["register"]

DEFAULT_LICENSE_PATH = LicenseConfig.model_fields["license_path"].default


def register(commands: argparse._SubParsersAction) -> None:
    keygen = commands.add_parser("keygen", help="write an X25519 license key pair (PREFIX.key, PREFIX.pub)")
    keygen.add_argument("--out", default="license", help="path prefix of the two files (default: license)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing files")
    keygen.set_defaults(func=_keygen)

    decrypt = commands.add_parser("decrypt", help="decrypt the model files of a licensed image or package")
    decrypt.add_argument("path", type=Path, help="an encrypted file, or a directory (an unpacked image rootfs or package)")
    decrypt.add_argument("--license-key", required=True, help="license private key: a PEM file, PEM text or base64")
    decrypt.add_argument("--license", type=Path, help=f"license file (default: <rootfs>/{DEFAULT_LICENSE_PATH})")
    decrypt.add_argument("--dongle-id", default=os.environ.get("ALGOMINT_DONGLE_ID"),
                         help="for hard licenses: the id the dongle reports (env ALGOMINT_DONGLE_ID)")
    decrypt.add_argument("--output", type=Path, help="write decrypted files here instead of in place")
    decrypt.set_defaults(func=_decrypt)


def _keygen(args: argparse.Namespace) -> int:
    private_path, public_path = Path(args.out + ".key"), Path(args.out + ".pub")
    for path in (private_path, public_path):
        if path.exists() and not args.force:
            print(f"algomint: {path} exists (use --force to overwrite)", file=sys.stderr)
            return 1
    private_pem, public_pem = generate_keypair()
    if private_path.parent != Path(""):
        private_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_key_file(private_path, private_pem, mode=0o600, replace=args.force)
        write_key_file(public_path, public_pem, mode=0o644, replace=args.force)
    except FileExistsError as exc:
        print(f"algomint: {exc.filename2 or exc.filename} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    public = load_public_key(public_pem)
    print(f"private key: {private_path} (keep it secret; it opens every license issued to this key)")
    print(f"public key:  {public_path} (fingerprint {fingerprint(public)})")
    print(f"config:      public_key = \"{base64.b64encode(public_bytes(public)).decode()}\"")
    return 0


def _find_license(path: Path) -> Path | None:
    start = path if path.is_dir() else path.parent
    for base in (start, *start.parents):
        candidate = base / DEFAULT_LICENSE_PATH
        if candidate.is_file():
            return candidate
    return None


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _is_encrypted(path: Path) -> bool:
    with open(path, "rb") as f:
        return is_envelope(f.read(HEADER_SIZE))


def _decrypt_one(path: Path, target: Path, keys: dict[bytes, bytes]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".decrypt-", dir=target.parent)
    try:
        with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            decrypt_stream(src, dst, keys)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, target)  # a file is either still encrypted or fully decrypted
    except BaseException:
        os.unlink(tmp)
        raise


def _decrypt(args: argparse.Namespace) -> int:
    root: Path = args.path
    if not root.exists():
        print(f"algomint: {root} does not exist", file=sys.stderr)
        return 2
    license_path = args.license or _find_license(root)
    if license_path is None:
        print(f"algomint: no license file found (looked for {DEFAULT_LICENSE_PATH} above {root}); use --license",
              file=sys.stderr)
        return 2
    try:
        key_material = Path(args.license_key) if Path(args.license_key).is_file() else args.license_key
        private = load_private_key(key_material)
        key_id, data_key = unwrap_license(license_path.read_bytes(), PrivateMaterial(private, args.dongle_id))
    except (KeyMaterialError, LicenseError, OSError) as exc:
        print(f"algomint: {exc}", file=sys.stderr)
        return 1
    keys = {key_id: data_key}
    done = failed = 0
    for path in _files(root):
        if path.resolve() == license_path.resolve() or not _is_encrypted(path):
            if root.is_file():
                print(f"algomint: {path} is not an encrypted file", file=sys.stderr)
                return 1
            continue
        target = path if args.output is None else args.output / (path.relative_to(root) if root.is_dir() else path.name)
        try:
            _decrypt_one(path, target, keys)
            done += 1
        except (EnvelopeError, OSError) as exc:
            print(f"algomint: {path}: {exc}", file=sys.stderr)
            failed += 1
    print(f"decrypted {done} file(s)" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0
