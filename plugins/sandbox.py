"""The OS-level sandbox function and job plugins run in: bubblewrap, from a declarative spec.

Each run gets new mount, PID, network, IPC and UTS namespaces. The mount namespace holds
only the runtime read-only (``ro_paths``, the service's Python) and the run's own work
directory read-write at ``/work``; nothing else of the host (no data directory, keys,
config, other processes' ``/proc``). Plugin processes run as an unprivileged uid with an
environment built from scratch. The PID namespace dies with bubblewrap, which dies with the
service (``--die-with-parent``); and the run's first process is ``plugins.watchdog``, which
kills the namespace when the service's lifeline ends, which covers a service killed while
bubblewrap was still setting up. So no process of a run outlives the service, even after
``kill -9``.

When the service runs as root, bubblewrap sets up the namespaces and ``setpriv`` drops to
``uid``/``gid`` (no capabilities, no new privileges) before the plugin's program starts, so
on the host the processes belong to that uid. Run as another user, bubblewrap uses an
unprivileged user namespace: ``uid`` inside maps to the service's uid outside.

The sandbox is probed once at start-up. If it cannot be set up, ``require`` refuses function
and job plugins with the reason, unless ``unsafe`` is configured: then they run as plain
child processes (see ``view``/``launch``), which the logs and ``/readyz`` report."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

from packer.settings import SandboxConfig

from . import watchdog
from ._process import lifeline

__all__ = ["Launch", "Sandbox", "SandboxSpec", "SandboxUnavailable", "WORK"]

WORK = PurePosixPath("/work")  # where a run's directory appears inside the sandbox
_PROBE_TIMEOUT = 20.0
# Top-level directories that Debian links into /usr (merged /usr) or that hold libraries.
_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_SETPRIV = "setpriv"
# What a plugin granted the network needs to resolve names and check certificates.
_NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl/certs", "/etc/ca-certificates")
# How the watchdog reports a program it cannot execute.
_EXEC_FAILED = re.compile(r"^sandbox: failed to execute (.*)$", re.MULTILINE)
_WATCHDOG = Path(watchdog.__file__).read_text()


class SandboxUnavailable(Exception):
    """Function and job plugins are refused: the sandbox could not be set up."""


@dataclass(frozen=True)
class SandboxSpec:
    """One run: ``root`` (a fresh host directory) becomes ``/work``, read-write."""

    root: Path
    cwd: PurePosixPath  # inside the sandbox view (see ``Sandbox.view``)
    env: Mapping[str, str] = field(default_factory=dict)
    network: bool = False


@dataclass(frozen=True)
class Launch:
    """What ``run_process`` starts: the argv, its own environment and directory, the lifeline."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    pass_fds: tuple[int, ...] = ()


class Sandbox:
    """One per service: probed at start-up, then turns each run's argv into a sandboxed one."""

    def __init__(self, config: SandboxConfig, private: Sequence[Path] = ()) -> None:
        self.config = config
        # Paths the sandbox must never show (the data directory, keys, config).
        self.private = [Path(os.path.abspath(p)) for p in private]
        self.active = False
        self.error: str | None = "the sandbox was not probed"
        self._bwrap: str | None = None
        self._setpriv: str | None = None
        self._privileged = os.geteuid() == 0

    # -- state -----------------------------------------------------------------------
    @property
    def status(self) -> str:
        """``ok``, or why not and what follows from it (for logs and /readyz)."""
        if self.active:
            return "ok"
        if self.config.unsafe:
            return f"unsafe: {self.error}; function and job plugins run WITHOUT a sandbox"
        return f"unavailable: {self.error}; function and job plugins are refused"

    def require(self, kind: str) -> None:
        """Raise ``SandboxUnavailable`` unless ``kind`` plugins may run (sandboxed, or unsafe mode)."""
        if not self.active and not self.config.unsafe:
            raise SandboxUnavailable(
                f"{kind} plugins are refused: the sandbox is unavailable ({self.error}); install bubblewrap "
                f"or set [plugins.sandbox] bwrap, or accept the risk with [plugins.sandbox] unsafe = true")

    def network_allowed(self, repository: str) -> bool:
        return any(fnmatch.fnmatchcase(repository, pattern) for pattern in self.config.network)

    def view(self, root: Path) -> PurePosixPath:
        """Where ``root`` appears to the plugin: ``/work`` in the sandbox, else its absolute host path."""
        return WORK if self.active else PurePosixPath(os.path.abspath(root))

    # -- start-up --------------------------------------------------------------------
    def probe(self, scratch: Path) -> bool:
        """Find bubblewrap and run a trivial program in a full sandbox once; record the outcome."""
        self.active, self.error = False, None
        try:
            self._check_private()
            self._bwrap = _which(self.config.bwrap, "bubblewrap")
            if self._privileged:
                self._setpriv = _which(_SETPRIV, "setpriv (util-linux)")
                if not self._visible(Path(self._setpriv)):
                    raise SandboxUnavailable(f"{self._setpriv} is not under [plugins.sandbox] ro_paths")
            scratch.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="probe-", dir=scratch) as tmp:
                root = Path(tmp)
                self._hand_over(root)
                code = "import os; open('ok', 'w').write(str(os.getuid()))"
                argv = self._wrap([sys.executable, "-I", "-S", "-c", code],
                                  SandboxSpec(root, WORK, {"PATH": "/usr/bin:/bin"}))
                done = subprocess.run(argv, env=_bwrap_env(), cwd=root, stdin=subprocess.DEVNULL,
                                      capture_output=True, timeout=_PROBE_TIMEOUT, close_fds=True)
                marker = root / "ok"
                if done.returncode != 0 or not marker.exists():
                    output = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
                    raise SandboxUnavailable(f"{self._bwrap} failed: {output[-1] if output else done.returncode}")
                if self._privileged and marker.read_text() != str(self.config.uid):
                    raise SandboxUnavailable(f"the sandbox ran as uid {marker.read_text()}, not {self.config.uid}")
        except SandboxUnavailable as exc:
            self.error = str(exc)
        except (OSError, subprocess.SubprocessError) as exc:
            self.error = f"cannot run bubblewrap: {exc}"
        else:
            self.active = True
        return self.active

    def _check_private(self) -> None:
        for path in self._ro_paths():
            for secret in self.private:
                if secret.is_relative_to(path) or path.is_relative_to(secret):
                    raise SandboxUnavailable(f"[plugins.sandbox] ro_paths: {path} would expose {secret}")

    def _visible(self, path: Path) -> bool:
        return any(path == p or path.is_relative_to(p) for p in self._ro_paths())

    def _ro_paths(self) -> list[Path]:
        # The service's own interpreter (and a virtual environment's, if any) run function plugins.
        paths = [Path(p) for p in self.config.ro_paths] + [Path(sys.base_prefix), Path(sys.prefix)]
        out: list[Path] = []
        for path in paths:
            if path not in out:
                out.append(path)
        return out

    # -- one run ---------------------------------------------------------------------
    def prepare(self, root: Path) -> None:
        """Hand ``root`` to the sandbox uid (when the service is root); the service reads it back as root."""
        if self.active:
            self._hand_over(root)

    def _hand_over(self, root: Path) -> None:
        if not self._privileged:
            return  # the user namespace maps the sandbox uid to ours: the files are already writable
        uid, gid = self.config.uid, self.config.gid
        os.chown(root, uid, gid)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)

    def launch(self, argv: Sequence[str], spec: SandboxSpec) -> Launch:
        """The process to start for ``argv`` under ``spec``; sandboxed unless unsafe mode is in force."""
        fd = lifeline()
        if self.active:
            return Launch(self._wrap(_watched(argv, fd, "-1"), spec), _bwrap_env(), spec.root, (fd,))
        self.require("function and job")
        host_cwd = Path(str(spec.cwd))  # the view is the host path itself
        # Without a PID namespace the watchdog's reach is the run's own process group.
        return Launch(_watched(argv, fd, "0"), dict(spec.env), host_cwd, (fd,))

    def exec_failure(self, code: int | None, output: str) -> str | None:
        """Why the plugin's program could not be started, if that is what happened."""
        if code != 127:
            return None
        lines = output.rstrip().splitlines()
        found = _EXEC_FAILED.match(lines[-1]) if lines else None
        return found.group(1) if found else None

    def returncode(self, code: int | None) -> int | None:
        """The plugin's exit status in ``subprocess`` form: bubblewrap reports death by signal N
        as status 128+N, which becomes -N (a plugin exiting 128+N itself reads the same)."""
        if self.active and code is not None and 128 < code < 128 + 65:
            return 128 - code
        return code

    def _wrap(self, argv: Sequence[str], spec: SandboxSpec) -> list[str]:
        assert self._bwrap is not None
        cfg = self.config
        args = [self._bwrap, "--die-with-parent", "--new-session",
                "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
        if not spec.network:
            args.append("--unshare-net")
        if self._privileged:
            # Only to let setpriv drop to the sandbox uid; it clears every capability.
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args += ["--unshare-user", "--disable-userns", "--uid", str(cfg.uid), "--gid", str(cfg.gid)]
        for name in _ROOT_LINKS:
            top = Path("/") / name
            if top.is_symlink():
                args += ["--symlink", os.readlink(top), str(top)]
        ro_paths = self._ro_paths()
        parents = sorted({str(a) for p in ro_paths for a in p.parents if a != Path("/")}, key=len)
        for parent in parents:
            # Created traversable: a host parent such as /root (0700) would hide what is bound below it.
            args += ["--perms", "0755", "--dir", parent]
        for path in ro_paths:
            args += ["--ro-bind-try", str(path), str(path)]
        if spec.network:
            for name in _NETWORK_FILES:
                args += ["--ro-bind-try", name, name]
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--bind", os.path.abspath(spec.root), str(WORK), "--chdir", str(spec.cwd), "--clearenv"]
        for name, value in spec.env.items():
            args += ["--setenv", name, value]
        args.append("--")
        if self._privileged:
            assert self._setpriv is not None
            args += [self._setpriv, f"--reuid={cfg.uid}", f"--regid={cfg.gid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        return args + list(argv)


def _watched(argv: Sequence[str], fd: int, scope: str) -> list[str]:
    # The service's own interpreter: the sandbox shows it (the probe ran it there).
    return [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(fd), scope, "--", *argv]


def _which(program: str, what: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise SandboxUnavailable(f"{what} not found ({program!r})")
    return os.path.abspath(found)


def _bwrap_env() -> dict[str, str]:
    # bubblewrap itself gets nothing of the service's environment either.
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
