"""The ``job`` plugin kind: a command transforms the package unpacked in a work directory.

The command is an argv list from the plugin config (never a shell string); the tokens
``{package}``, ``{plugin}`` and ``{workdir}`` inside an argument are replaced by those
directories' absolute paths as the job sees them (``/work/...`` inside the sandbox).
It runs through a ``JobRunner`` (the local runner, in the sandbox, is built in) with a time
limit and an output limit; its exit status and output go to the job log."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from packer.package import Package, PackageError
from packer.plugin import PluginArtifact, PluginContext, PluginEnv, PluginError, options_model

from .._process import scrubbed_env, signal_name
from ..sandbox import SandboxUnavailable
from .runner import RUNNERS, JobResult, JobRunner, JobSpec, LocalRunner
from .workdir import read_back, unpack

__all__ = ["JobOptions", "JobPlugin", "JobResult", "JobRunner", "JobSpec", "LocalRunner", "setup"]

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_LOG_TAIL = 2000


class JobOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(min_length=1, max_length=256)
    timeout: float | None = Field(None, gt=0)
    env: dict[str, str] = {}
    # Network access; granted only to plugins the admin lists in [plugins.sandbox] network.
    network: bool = False

    @field_validator("command")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if not value[0] or any("\x00" in arg for arg in value):
            raise ValueError("argv[0] must be a program; no NUL bytes")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not _ENV_NAME.match(k) or k.startswith("ALGOMINT_")]
        if bad:
            raise ValueError(f"invalid or reserved variable names {bad}")
        return value


class JobPlugin:
    def __init__(self, artifact: PluginArtifact, options: JobOptions, env: PluginEnv, runner: JobRunner) -> None:
        self.artifact = artifact
        self.options = options
        self.env = env
        self.runner = runner
        settings = env.settings.job
        self.timeout = min(options.timeout or settings.timeout, settings.max_timeout)

    async def apply(self, package: Package, context: PluginContext) -> Package:
        self.env.workdir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="job-", dir=self.env.workdir))
        try:
            return await self._run(root, package, context)
        finally:
            await asyncio.to_thread(shutil.rmtree, root, True)

    async def _run(self, root: Path, package: Package, context: PluginContext) -> Package:
        try:
            await asyncio.to_thread(unpack, root, package, self.artifact.files)
            await asyncio.to_thread(self.env.sandbox.prepare, root)
        except (OSError, PackageError) as exc:
            raise PluginError(f"cannot prepare the work directory: {exc}") from None
        view = self.env.sandbox.view(root)  # absolute, whatever the configured work area
        dirs = {"package": str(view / "package"), "plugin": str(view / "plugin"), "workdir": str(view)}
        argv = [_substitute(arg, dirs) for arg in self.options.command]
        env = scrubbed_env(view / "tmp", {
            **self.options.env,
            "ALGOMINT_WORKDIR": dirs["workdir"],
            "ALGOMINT_PACKAGE_DIR": dirs["package"],
            "ALGOMINT_PLUGIN_DIR": dirs["plugin"],
            "ALGOMINT_CONTEXT": json.dumps(context.to_json(), sort_keys=True),
        })
        spec = JobSpec(argv, root, view / "package", env, self.timeout, self.env.settings.job.output_limit,
                       self.options.network)
        try:
            result = await self.runner.run(spec)
        except SandboxUnavailable as exc:
            raise PluginError(str(exc)) from None
        except OSError as exc:
            raise PluginError(f"job command {argv[0]!r} could not start: {exc.strerror or exc}") from None
        output = result.output.decode(errors="replace")
        if output:
            context.log(output)
        if result.timed_out:
            raise PluginError(f"job timed out after {self.timeout:g}s; its process group was killed")
        if result.output_exceeded:
            raise PluginError(f"job printed more than {spec.output_limit} bytes of output; it was killed")
        failure = self.env.sandbox.exec_failure(result.exit_code, output)
        if failure is not None:
            raise PluginError(f"job command {argv[0]!r} could not start in the sandbox: {failure}")
        if result.exit_code is None or result.exit_code != 0:
            how = (f"was killed by {signal_name(-result.exit_code)}" if result.exit_code and result.exit_code < 0
                   else f"exited with status {result.exit_code}")
            raise PluginError(f"job {how}", {"output_tail": output[-_LOG_TAIL:]})
        try:
            return await asyncio.to_thread(read_back, root, package, context.cap)
        except PackageError as exc:
            raise PluginError(exc.reason, exc.detail) from None


def _substitute(arg: str, dirs: dict[str, str]) -> str:
    # Only these exact tokens: other braces (JSON, Python source in -c) pass untouched.
    for name, value in dirs.items():
        arg = arg.replace("{" + name + "}", value)
    return arg


def setup(artifact: PluginArtifact, env: PluginEnv) -> JobPlugin:
    try:
        env.sandbox.require("job")
    except SandboxUnavailable as exc:
        raise PluginError(f"{artifact.ref}: {exc}") from None
    options: JobOptions = options_model(JobOptions, artifact)
    if options.network and not env.sandbox.network_allowed(artifact.repository):
        raise PluginError(f"{artifact.ref}: network: {artifact.repository} may not have network access "
                          "(the admin grants it with [plugins.sandbox] network)")
    settings = env.settings.job
    runner = RUNNERS[settings.runner](env.sandbox, processes=env.settings.sandbox.processes)
    return JobPlugin(artifact, options, env, runner)
