"""The job runner interface and the built-in local-subprocess runner.

A runner executes one ``JobSpec`` — an argv list in a prepared work directory — and
reports how it ended. The local runner runs it in the sandbox (``plugins.sandbox``: the work
directory is all it sees of the host, its PID namespace dies with it) with a time limit, an
output limit and a process-count limit; other runners (a Kubernetes Job per run, see
``docs/job-runners.md``) implement the same ``run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from .._process import Limits, run_process
from ..sandbox import Sandbox, SandboxSpec

__all__ = ["JobResult", "JobRunner", "JobSpec", "LocalRunner", "RUNNERS"]


@dataclass(frozen=True)
class JobSpec:
    argv: list[str]
    workdir: Path  # the fresh host directory the job owns (the package is unpacked below it)
    cwd: PurePosixPath  # as the job sees it (argv, env and cwd name paths in the job's view)
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 600.0
    output_limit: int = 1024 * 1024
    network: bool = False


@dataclass(frozen=True)
class JobResult:
    exit_code: int | None  # negative: killed by that signal
    output: bytes  # stdout and stderr interleaved, at most output_limit bytes
    timed_out: bool = False
    output_exceeded: bool = False


class JobRunner(Protocol):
    async def run(self, spec: JobSpec) -> JobResult:
        """Run the job to its end; raise ``OSError`` only if it could not be started."""


class LocalRunner:
    """Runs the job in a local sandbox: killed whole on timeout or too much output."""

    def __init__(self, sandbox: Sandbox, file_limit: int | None = None, processes: int | None = None) -> None:
        self.sandbox = sandbox
        self.file_limit = file_limit
        self.processes = processes

    async def run(self, spec: JobSpec) -> JobResult:
        launch = self.sandbox.launch(spec.argv, SandboxSpec(spec.workdir, spec.cwd, spec.env, spec.network))
        result = await run_process(
            launch.argv, cwd=launch.cwd, env=launch.env, timeout=spec.timeout, stdout_limit=spec.output_limit,
            stderr_limit=spec.output_limit, merge_stderr=True,
            limits=Limits(file_bytes=self.file_limit, open_files=4096, processes=self.processes),
            pass_fds=launch.pass_fds,
        )
        return JobResult(self.sandbox.returncode(result.returncode), result.stdout, result.timed_out, result.overflow is not None)


RUNNERS: dict[str, type[LocalRunner]] = {"local": LocalRunner}
