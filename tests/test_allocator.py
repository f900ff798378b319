"""glibc keeps large freed buffers (a password check's 16 MiB) unless the mmap threshold
is fixed: checked in fresh interpreters, the way a server's worker threads use memory."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.allocator import trim_when_quiet, tune_malloc

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import hashlib, os, sys, threading
from proxy.allocator import trim_when_quiet, tune_malloc

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

if sys.argv[1] == "tuned":
    assert tune_malloc()
keep = []

def checks():
    for _ in range(4):
        hashlib.scrypt(b"pw", salt=b"s" * 16, n=2**14, r=8, p=1, maxmem=64 * 2**20)
        keep.append(os.urandom(200))  # small blocks between the big ones, as a server makes

before = rss_mib()
for _ in range(4):
    worker = threading.Thread(target=checks)
    worker.start()
    worker.join()
print(rss_mib() - before)
"""


def _kept_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=False)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(not Path("/proc/self/status").exists() or sys.platform != "linux", reason="glibc, Linux")
def test_large_buffers_go_back_to_the_system() -> None:
    if not tune_malloc():
        pytest.skip("not glibc")
    # Untuned, a 16 MiB scrypt buffer stays in a worker thread's arena once freed.
    assert _kept_mib("plain") >= 16
    assert _kept_mib("tuned") < 8


def test_operator_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert tune_malloc() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("ALGOMINT_MALLOC_TUNE", "0")
    assert tune_malloc() is False


class _Requests:
    def __init__(self) -> None:
        self.count = 0
        self.started = 0

    async def wait_idle(self) -> None:
        while self.count:
            await asyncio.sleep(0.001)


async def test_trimmed_once_per_quiet_spell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALGOMINT_MALLOC_TUNE", raising=False)
    requests, trims = _Requests(), []
    task = asyncio.create_task(trim_when_quiet(requests, quiet=0.02, trim=lambda: trims.append(1) or True))
    try:
        await asyncio.sleep(0.1)
        assert len(trims) == 1  # after start-up's allocations; then nothing new to give back
        requests.count, requests.started = 1, 1  # a request in flight: never while busy
        await asyncio.sleep(0.1)
        assert len(trims) == 1
        requests.count = 0  # served; quiet again: trimmed once more
        await asyncio.sleep(0.1)
        assert len(trims) == 2
        for _ in range(5):  # requests keep starting: no trim until they stop
            requests.started += 1
            await asyncio.sleep(0.01)
        assert len(trims) == 2
        await asyncio.sleep(0.1)
        assert len(trims) == 3
    finally:
        task.cancel()

