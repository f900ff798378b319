"""Running a plugin's process: argv only, its own process group, bounded output and time.

Shared by the ``job`` and ``function`` kinds, and the only way the service starts
programs; normally ``argv`` is bubblewrap wrapping the plugin (``plugins.sandbox``). The
child starts in a new session (so the whole group can be killed) with only the
environment given and no inherited descriptor, with resource limits applied before
``exec`` and, on Linux, a parent-death signal so it never outlives a crashed service. When
the process ends — normally, on timeout, or on too much output — every process left in its
group is killed (for bubblewrap: the whole sandbox, whose PID namespace dies with it), so
nothing carries over into the next job."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Mapping, Sequence

__all__ = ["Limits", "ProcessResult", "lifeline", "run_process", "signal_name", "scrubbed_env"]

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
_lifeline: tuple[int, int] | None = None


def lifeline() -> int:
    """The read end of this process's lifeline: a pipe whose write end nothing else ever holds
    (it is close-on-exec and the service does not fork without exec), so a child holding the
    read end sees end-of-file exactly when the service is gone, even after ``kill -9``."""
    global _lifeline
    if _lifeline is None:
        _lifeline = os.pipe()
    return _lifeline[0]


@dataclass(frozen=True)
class Limits:
    """``resource`` limits set in the child before it executes anything."""

    cpu_seconds: int | None = None
    memory_bytes: int | None = None
    file_bytes: int | None = None
    open_files: int | None = 256
    # Processes the child's uid may have at once (RLIMIT_NPROC): a fork bomb fails, not the host.
    processes: int | None = None


@dataclass
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


def scrubbed_env(home: PurePath, extra: Mapping[str, str] = ()) -> dict[str, str]:
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
    if limits.processes is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(pid: int) -> None:
    if pid <= 0:
        return  # never our own group (0) or every process (-1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _Collector(asyncio.SubprocessProtocol):
    """Keeps each output stream up to its limit and notes when the process exits.

    A protocol rather than stream readers: nothing pauses the pipes, so output past a
    limit is read and dropped, and the exit is known as soon as it happens, even while a
    process that left the group still holds a pipe open."""

    def __init__(self, limits: dict[int, int]) -> None:
        loop = asyncio.get_running_loop()
        self.limits = limits
        self.outputs = {fd: bytearray() for fd in limits}
        self.overflow: str | None = None
        self.exited: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()  # exited, and every pipe closed
        self._pid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._pid = transport.get_pid()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buffer = self.outputs[fd]
        room = self.limits[fd] - len(buffer)
        if len(data) <= room:
            buffer += data
            return
        buffer += data[: max(room, 0)]
        if self.overflow is None:
            self.overflow = _STREAMS[fd]
            _kill_group(self._pid)

    def process_exited(self) -> None:
        _settle(self.exited)

    def connection_lost(self, exc: Exception | None) -> None:
        _settle(self.finished)


_STREAMS = {1: "stdout", 2: "stderr"}


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
    pass_fds: Sequence[int] = (),
) -> ProcessResult:
    """Run ``argv`` (never through a shell) and collect its output within the limits.

    ``env`` is the child's whole environment: nothing of the service's is inherited, and
    no descriptor but the standard three and ``pass_fds``.

    Raises ``OSError`` if it can't be started (missing executable, permissions)."""
    loop = asyncio.get_running_loop()
    collector = _Collector({1: stdout_limit} if merge_stderr else {1: stdout_limit, 2: stderr_limit})
    transport, _ = await loop.subprocess_exec(
        lambda: collector,
        *argv,
        cwd=str(cwd),
        env=dict(env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        start_new_session=True,
        close_fds=True,  # no descriptor of the service reaches a plugin
        pass_fds=tuple(pass_fds),
        preexec_fn=lambda: _preexec(limits),
    )
    timed_out = False
    try:
        if stdin is not None:
            feed = transport.get_pipe_transport(0)
            assert isinstance(feed, asyncio.WriteTransport)
            feed.write(stdin)  # a child that stops reading just ends the feed: its exit status tells why
            feed.close()  # after the buffered bytes are written
        try:
            await asyncio.wait_for(asyncio.shield(collector.exited), timeout)
        except asyncio.TimeoutError:
            timed_out = True
    finally:
        _kill_group(transport.get_pid())  # leftovers of the group never outlive the run
        # The exit follows the kill at once; the rest of the output follows unless a
        # process that left the group holds a pipe, which must not hold the run too.
        await asyncio.wait([collector.exited], timeout=_DRAIN_GRACE)
        await asyncio.wait([collector.finished], timeout=_DRAIN_GRACE)
        transport.close()
    return ProcessResult(transport.get_returncode(), bytes(collector.outputs[1]), bytes(collector.outputs.get(2, b"")),
                         timed_out, collector.overflow)
