"""The job runner interface and the built-in local-subprocess runner.

A runner executes one ``JobSpec`` — an argv list in a prepared work directory — and
reports how it ended. The local runner runs it as a child process group with a time
limit and an output limit; other runners (a Kubernetes Job per run, see
``docs/job-runners.md``) implement the same ``run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .._process import Limits, run_process

__all__ = ["JobResult", "JobRunner", "JobSpec", "LocalRunner", "RUNNERS"]


@dataclass(frozen=True)
class JobSpec:
    argv: list[str]
    workdir: Path  # the fresh directory the job owns (the package is unpacked below it)
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 600.0
    output_limit: int = 1024 * 1024


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
    """Runs the job as a local process group: killed whole on timeout or too much output."""

    def __init__(self, file_limit: int | None = None) -> None:
        self.file_limit = file_limit

    async def run(self, spec: JobSpec) -> JobResult:
        result = await run_process(
            spec.argv, cwd=spec.cwd, env=spec.env, timeout=spec.timeout, stdout_limit=spec.output_limit,
            stderr_limit=spec.output_limit, merge_stderr=True,
            limits=Limits(file_bytes=self.file_limit, open_files=4096),
        )
        return JobResult(result.returncode, result.stdout, result.timed_out, result.overflow is not None)


RUNNERS: dict[str, type[LocalRunner]] = {"local": LocalRunner}
