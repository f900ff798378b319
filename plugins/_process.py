"""Running a plugin's process: argv only, its own process group, bounded output and time.

Shared by the ``job`` and ``function`` kinds. The child starts in a new session (so the
whole group can be killed), with resource limits applied before ``exec`` and, on Linux,
a parent-death signal so it never outlives a crashed service. When the process ends —
normally, on timeout, or on too much output — every process left in its group is
killed, so nothing carries over into the next job."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["Limits", "ProcessResult", "run_process", "signal_name", "scrubbed_env"]

_READ = 64 * 1024
_DRAIN_GRACE = 2.0
_PR_SET_PDEATHSIG = 1


def _find_prctl():  # type: ignore[no-untyped-def]
    # Resolved once in the parent: loading a library between fork and exec can deadlock.
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


@dataclass(frozen=True)
class Limits:
    """``resource`` limits set in the child before it executes anything."""

    cpu_seconds: int | None = None
    memory_bytes: int | None = None
    file_bytes: int | None = None
    open_files: int | None = 256


@dataclass(frozen=True)
class ProcessResult:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    overflow: str | None = None  # "stdout" / "stderr": that stream passed its limit

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def scrubbed_env(home: Path, extra: Mapping[str, str] = ()) -> dict[str, str]:
    """A minimal environment: nothing inherited from the service (no secrets)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        **dict(extra),
    }


def _preexec(limits: Limits) -> None:
    # Runs in the child between fork and exec: only async-signal-safe-ish calls.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the service, even on kill -9
    if limits.cpu_seconds is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    if limits.memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    if limits.file_bytes is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    if limits.open_files is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    stdout_limit: int,
    stderr_limit: int,
    stdin: bytes | None = None,
    merge_stderr: bool = False,
    limits: Limits = Limits(),
) -> ProcessResult:
    """Run ``argv`` (never through a shell) and collect its output within the limits.

    Raises ``OSError`` if it can't be started (missing executable, permissions)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd),
        env=dict(env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: _preexec(limits),
    )
    overflow: list[str] = []
    outputs = {"stdout": bytearray(), "stderr": bytearray()}

    async def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(stdin or b"")
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child stopped reading; its exit status tells why
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.close()

    async def drain(stream: asyncio.StreamReader | None, name: str, limit: int) -> None:
        if stream is None:
            return
        buffer = outputs[name]
        while chunk := await stream.read(_READ):
            if name in overflow:
                # Killed already: read on to the pipe's end. A stream left unread keeps its
                # transport paused, and asyncio reports the exit only once every pipe closed.
                continue
            if len(buffer) + len(chunk) > limit:
                buffer += chunk[: limit - len(buffer)]
                overflow.append(name)
                _kill_group(proc.pid)
                continue
            buffer += chunk

    tasks = [asyncio.create_task(drain(proc.stdout, "stdout", stdout_limit)),
             asyncio.create_task(drain(proc.stderr, "stderr", stderr_limit))]
    if stdin is not None:
        tasks.append(asyncio.create_task(feed()))
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        timed_out = True
    finally:
        _kill_group(proc.pid)  # leftovers of the group never outlive the run
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
        _, pending = await asyncio.wait(tasks, timeout=_DRAIN_GRACE)
        for task in pending:
            task.cancel()
    return ProcessResult(proc.returncode, bytes(outputs["stdout"]), bytes(outputs["stderr"]), timed_out,
                         overflow[0] if overflow else None)
