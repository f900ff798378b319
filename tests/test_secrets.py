"""Secrets out of reach: key files created 0600 atomically, the bootstrap password erased from
the environment, nothing of the service's environment or descriptors handed to children."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from packer.licensing.keys import write_key_file
from proxy.cli import main as cli_main


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_creates_the_private_key_0600(tmp_path: Path) -> None:
    prefix = tmp_path / "soft"
    assert cli_main(["keygen", "--out", str(prefix)]) == 0
    assert _mode(tmp_path / "soft.key") == 0o600
    assert _mode(tmp_path / "soft.pub") == 0o644


def test_keygen_force_over_a_readable_file_leaves_a_0600_key(tmp_path: Path) -> None:
    # An existing world-readable file must not lend its mode to the new private key.
    old = tmp_path / "soft.key"
    old.write_text("old")
    old.chmod(0o644)
    assert cli_main(["keygen", "--out", str(tmp_path / "soft"), "--force"]) == 0
    assert _mode(old) == 0o600 and old.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["soft.key", "soft.pub"]  # no temporary left


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    (tmp_path / "soft.key").write_text("keep")
    assert cli_main(["keygen", "--out", str(tmp_path / "soft")]) == 1
    assert (tmp_path / "soft.key").read_text() == "keep"


def test_key_file_is_never_visible_with_other_modes(tmp_path: Path) -> None:
    # The file is complete and 0600 under its name from the start, and it is not replaced by default.
    target = tmp_path / "k.key"
    write_key_file(target, b"secret")
    assert target.read_bytes() == b"secret" and _mode(target) == 0o600
    with pytest.raises(FileExistsError):
        write_key_file(target, b"other")
    assert target.read_bytes() == b"secret"
    assert [p.name for p in tmp_path.iterdir()] == ["k.key"]


def test_bootstrap_password_is_erased_from_the_environment() -> None:
    # In a separate process: the variable leaves os.environ, the start-up environment block
    # (/proc/self/environ) and what children inherit.
    code = (
        "import os, subprocess\n"
        "from proxy.auth.setup import admin_password\n"
        "from proxy.config import load_config\n"
        "assert admin_password(load_config(None, environ={})) == 'bootstrap-secret-123'\n"
        "assert 'ALGOMINT_ADMIN_PASSWORD' not in os.environ\n"
        "assert b'bootstrap-secret-123' not in open('/proc/self/environ', 'rb').read()\n"
        "child = subprocess.run(['sh', '-c', 'echo \"[$ALGOMINT_ADMIN_PASSWORD]\"'], capture_output=True)\n"
        "assert child.stdout == b'[]\\n', child.stdout\n"
        "print('erased')\n"
    )
    env = {**os.environ, "ALGOMINT_ADMIN_PASSWORD": "bootstrap-secret-123",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "erased\n", done.stderr
