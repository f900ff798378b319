"""``run_process``: the one way plugins start programs, and its limits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from plugins._process import run_process, scrubbed_env


async def _run(tmp_path: Path, code: str, *, timeout: float = 30, limit: int = 4096):
    return await run_process([sys.executable, "-c", code], cwd=tmp_path, env=scrubbed_env(tmp_path),
                             timeout=timeout, stdout_limit=limit, stderr_limit=limit, merge_stderr=True)


async def test_too_much_output_kills_the_process_and_returns_at_once(tmp_path: Path) -> None:
    # A burst far past the limit, then silence. A large pipe lets more than the reader's
    # buffer limit arrive at once, so the stream pauses its transport: the reader must go
    # on to the pipe's end after the kill, or asyncio never reports the exit and the run
    # waits for its timeout.
    code = ("import fcntl, sys, time; fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, 1 << 20);"
            " sys.stdout.buffer.write(b'x' * (8 << 20)); sys.stdout.flush(); time.sleep(60)")
    for _ in range(3):
        result = await _run(tmp_path, code, timeout=10)
        assert result.overflow == "stdout"
        assert not result.timed_out
        assert result.stdout == b"x" * 4096
        assert result.signal == 9


async def test_output_within_the_limit_is_kept_whole(tmp_path: Path) -> None:
    result = await _run(tmp_path, "import sys; sys.stdout.write('a' * 3000); sys.stderr.write('b' * 1000)")
    assert result.returncode == 0 and result.overflow is None
    assert sorted(result.stdout) == sorted(b"a" * 3000 + b"b" * 1000)


async def test_a_silent_process_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    result = await _run(tmp_path, "import time; time.sleep(60)", timeout=0.5)
    assert result.timed_out and result.signal == 9



async def test_a_process_that_left_the_group_cannot_hold_the_run(tmp_path: Path) -> None:
    # The grandchild starts a session of its own (out of reach of the group kill) and
    # keeps the output pipe open for two minutes: the run still ends at its timeout.
    pidfile = tmp_path / "escaped.pid"
    code = ("import subprocess, sys, time;"
            " p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True);"
            f" open({str(pidfile)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(120)")
    try:
        result = await asyncio.wait_for(_run(tmp_path, code, timeout=1), 30)
        assert result.timed_out and result.signal == 9
        assert result.stdout == b"started\n"
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def test_stdin_is_fed_and_closed(tmp_path: Path) -> None:
    result = await run_process([sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read()[::-1])"],
                               cwd=tmp_path, env=scrubbed_env(tmp_path), timeout=30, stdout_limit=1 << 20,
                               stderr_limit=4096, stdin=b"abc" * 100_000)
    assert result.returncode == 0 and result.stdout == (b"abc" * 100_000)[::-1] and result.stderr == b""


async def test_a_process_that_ignores_its_stdin_still_ends_cleanly(tmp_path: Path) -> None:
    result = await run_process([sys.executable, "-c", "print('done')"], cwd=tmp_path, env=scrubbed_env(tmp_path),
                               timeout=30, stdout_limit=4096, stderr_limit=4096, stdin=b"x" * (4 << 20))
    assert result.returncode == 0 and result.stdout == b"done\n" and not result.timed_out
