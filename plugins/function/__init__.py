"""The ``function`` plugin kind: Python source from the artifact, run in an isolated process.

Each call starts ``python -I -S -B harness.py`` (isolated, standard library only) inside
the sandbox (``plugins.sandbox``: own mount, PID and network namespaces, an unprivileged
uid, only its fresh work directory writable) with an environment built from scratch,
CPU-time, memory, file-size and process-count limits (``resource``, set before exec), and a
wall-clock timeout that kills the whole sandbox. The package goes in as JSON on stdin,
the transformed package comes back as JSON on stdout and is validated like any input.

Work directory layout (``/work`` inside the sandbox)::

    harness.py   a copy of the harness (started before any user code)
    work/        the cwd, empty at start
    tmp/         HOME and TMPDIR"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from packer.exchange import document_limit, package_from_document, package_to_document
from packer.package import Package, PackageError, PackageFile
from packer.plugin import PluginArtifact, PluginContext, PluginEnv, PluginError, options_model

from .._process import Limits, run_process, scrubbed_env, signal_name
from ..sandbox import SandboxSpec, SandboxUnavailable

__all__ = ["FunctionOptions", "FunctionPlugin", "HARNESS", "setup"]

HARNESS = Path(__file__).with_name("harness.py")
_MARK = "algomint-function-error: "


class FunctionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The artifact file holding the code; default: its only ``.py`` file.
    source: str | None = None
    entrypoint: str = Field("transform", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout: float | None = Field(None, gt=0)
    # Network access; granted only to plugins the admin lists in [plugins.sandbox] network.
    network: bool = False


class FunctionPlugin:
    def __init__(self, artifact: PluginArtifact, source: PackageFile, options: FunctionOptions, env: PluginEnv) -> None:
        self.artifact = artifact
        self.source = source
        self.options = options
        self.env = env
        settings = env.settings.function
        self.timeout = min(options.timeout or settings.timeout, settings.max_timeout)

    async def apply(self, package: Package, context: PluginContext) -> Package:
        settings = self.env.settings.function
        request = await asyncio.to_thread(self._request, package, context)
        self.env.workdir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="fn-", dir=self.env.workdir))
        try:
            try:
                await asyncio.to_thread(self._prepare, root)
            except OSError as exc:
                raise PluginError(f"cannot prepare the work directory: {exc}") from None
            view = self.env.sandbox.view(root)
            spec = SandboxSpec(root, view / "work", scrubbed_env(view / "tmp"), self.options.network)
            launch = self.env.sandbox.launch([settings.python, "-I", "-S", "-B", str(view / "harness.py")], spec)
            result = await run_process(
                launch.argv,
                cwd=launch.cwd,
                env=launch.env,
                timeout=self.timeout,
                stdin=request,
                stdout_limit=document_limit(context.cap),
                stderr_limit=settings.output_limit,
                limits=Limits(cpu_seconds=settings.cpu_seconds, memory_bytes=settings.memory_mb * 1024 * 1024,
                              file_bytes=context.cap, processes=self.env.settings.sandbox.processes),
                pass_fds=launch.pass_fds,
            )
        except SandboxUnavailable as exc:
            raise PluginError(str(exc)) from None
        except OSError as exc:
            raise PluginError(f"cannot start the function interpreter {settings.python!r}: {exc.strerror or exc}") from None
        finally:
            await asyncio.to_thread(shutil.rmtree, root, True)
        result.returncode = self.env.sandbox.returncode(result.returncode)
        log = result.stderr.decode(errors="replace")
        reason = None
        if _MARK in log:
            log, _, reason = log.rpartition(_MARK)
            reason = reason.strip()
        if log.strip():
            context.log(log.rstrip())
        if result.timed_out:
            raise PluginError(f"function timed out after {self.timeout:g}s; its process was killed")
        if result.overflow == "stdout":
            raise PluginError(f"function returned a package over the {context.cap}-byte package cap "
                              f"(more than {document_limit(context.cap)} bytes of JSON)")
        if result.overflow == "stderr":
            raise PluginError(f"function printed more than {settings.output_limit} bytes of log; it was killed")
        if result.signal is not None:
            if result.signal in (9, 24):  # SIGKILL at the hard CPU limit, SIGXCPU at the soft one
                raise PluginError(f"function exceeded its CPU time limit ({settings.cpu_seconds}s) or was killed "
                                  f"({signal_name(result.signal)})")
            raise PluginError(f"function was killed by {signal_name(result.signal)}")
        failure = self.env.sandbox.exec_failure(result.returncode, log)
        if failure is not None:
            raise PluginError(f"the function interpreter {settings.python!r} could not start in the sandbox: {failure}"
                              " (it must be under [plugins.sandbox] ro_paths)")
        if result.returncode != 0:
            raise PluginError(f"function failed: {reason}" if reason else f"function exited with status {result.returncode}")
        return await asyncio.to_thread(self._result, result.stdout, package, context.cap)

    def _prepare(self, root: Path) -> None:
        for name in ("work", "tmp"):
            (root / name).mkdir()
        shutil.copyfile(HARNESS, root / "harness.py")
        self.env.sandbox.prepare(root)

    def _request(self, package: Package, context: PluginContext) -> bytes:
        return json.dumps({
            "network": self.options.network,
            "source": self.source.data.decode("utf-8", errors="replace"),
            "filename": self.source.path,
            "entrypoint": self.options.entrypoint,
            "package": package_to_document(package),
            "context": context.to_json(),
        }, ensure_ascii=False).encode()

    @staticmethod
    def _result(stdout: bytes, base: Package, cap: int) -> Package:
        try:
            document = json.loads(stdout)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PluginError(f"function returned invalid JSON: {exc}") from None
        if not isinstance(document, dict) or "package" not in document:
            raise PluginError("function returned no package")
        try:
            result = package_from_document(document["package"], base, cap)
        except PackageError as exc:
            raise PluginError(f"function returned an invalid package: {exc.reason}") from None
        for path, file in list(result.files.items()):
            old = base.files.get(path)
            if old is not None:  # the function sees bytes only: keep media type and annotations
                result.files[path] = PackageFile(path, file.data, old.media_type, old.annotations)
        return result


def setup(artifact: PluginArtifact, env: PluginEnv) -> FunctionPlugin:
    try:
        env.sandbox.require("function")
    except SandboxUnavailable as exc:
        raise PluginError(f"{artifact.ref}: {exc}") from None
    options: FunctionOptions = options_model(FunctionOptions, artifact)
    if options.network and not env.sandbox.network_allowed(artifact.repository):
        raise PluginError(f"{artifact.ref}: network: {artifact.repository} may not have network access "
                          "(the admin grants it with [plugins.sandbox] network)")
    if options.source is not None:
        source = artifact.files.get(options.source)
        if source is None:
            raise PluginError(f"{artifact.ref}: source: the artifact has no file {options.source!r}")
    else:
        candidates = [f for p, f in artifact.files.items() if p.endswith(".py")]
        if len(candidates) != 1:
            raise PluginError(f"{artifact.ref}: source: name the Python file (the artifact has {len(candidates)} .py files)")
        source = candidates[0]
    try:
        compile(source.data, source.path, "exec")  # syntax only: nothing runs in the service
    except (SyntaxError, ValueError) as exc:
        raise PluginError(f"{artifact.ref}: {source.path} does not compile: {exc}") from None
    return FunctionPlugin(artifact, source, options, env)
