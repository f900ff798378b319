"""Running Debian's podman as a registry client in tests: its own storage under the
test's directory (vfs: no kernel overlay needed), no systemd, no event log."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

__all__ = ["PODMAN", "Podman"]

PODMAN = shutil.which("podman")


class Podman:
    """One podman "installation"; ``close()`` removes its run directory (podman wants
    that path under 50 characters, so it lives in /tmp rather than the test's dir)."""

    def __init__(self, workdir: Path) -> None:
        assert PODMAN is not None
        self.root = workdir / "storage"
        self.runroot = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))

    async def __call__(self, *argv: str) -> tuple[int, str]:
        """Run ``podman <argv>``; returns (exit code, output)."""
        isolated = [
            "--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs", "--events-backend", "none",
        ]
        proc = await asyncio.create_subprocess_exec(
            PODMAN, *isolated, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        return proc.returncode, (out + err).decode()

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)
