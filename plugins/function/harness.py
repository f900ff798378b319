"""Runs one function-plugin call inside an isolated interpreter (``python -I -S -B``).

Standard library only: it is executed as a script, never imported by the service.

Protocol: stdin carries one JSON object ``{"source", "filename", "entrypoint",
"package", "context"}`` where ``package`` is ``{"descriptor", "annotations", "files":
[{"path", "data": base64}]}``. The user's ``transform(package, context)`` receives the
package as a dict with ``files`` mapping path -> bytes, may change it in place and return
``None``, or return a package of the same shape (file contents as bytes or str). The result
goes to the original stdout as ``{"package": …}`` in the form above; whatever the user
prints goes to stderr (the job log). A failure exits non-zero and ends stderr with a line
``algomint-function-error: <reason>``.

Before user code runs, an audit hook refuses writes outside the work directory (the
cwd) and ``TMPDIR``, links, process creation, network access (unless the plugin was granted
it) and native-library loading. This guards against mistakes and makes failures precise;
what bounds the process is the sandbox around it (namespaces, an unprivileged uid, resource
limits, an environment built from scratch), set up by the service."""

import base64
import json
import os
import sys
import traceback

MARK = "algomint-function-error: "
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {
    "os.remove": 1, "os.rename": 2, "os.replace": 2, "os.mkdir": 1, "os.rmdir": 1, "os.chmod": 1, "os.chown": 1,
    "os.truncate": 1, "os.utime": 1, "shutil.rmtree": 1, "shutil.copyfile": 2, "shutil.copytree": 2,
    "shutil.move": 2, "os.chdir": 1,
}
_PROCESS_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                   "os.kill", "os.killpg", "pty.spawn"}
_NETWORK_EVENTS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo"}


def fail(reason, code=2):
    sys.stderr.write("\n" + MARK + reason.replace("\n", " ")[:1000] + "\n")
    sys.stderr.flush()
    os._exit(code)


def guard(workdirs, network):
    roots = [os.path.realpath(w) for w in workdirs]

    def inside(path):
        if isinstance(path, int):
            return True  # an already open descriptor
        real = os.path.realpath(os.fsdecode(path))
        return any(real == root or real.startswith(root + os.sep) for root in roots)

    def hook(event, args):
        if event == "open":
            path, _mode, flags = args
            if path is not None and isinstance(flags, int) and flags & _WRITE_FLAGS and not inside(path):
                raise PermissionError(f"blocked: writing outside the work directory: {path}")
        elif event in _PATH_EVENTS:
            for path in args[: _PATH_EVENTS[event]]:
                if isinstance(path, (str, bytes, os.PathLike)) and not inside(path):
                    raise PermissionError(f"blocked: {event} outside the work directory: {path}")
        elif event in ("os.symlink", "os.link"):
            raise PermissionError("blocked: links are not allowed")
        elif event in _PROCESS_EVENTS:
            raise PermissionError(f"blocked: {event} (functions may not start or signal processes)")
        elif event in _NETWORK_EVENTS and not network:
            raise PermissionError(f"blocked: {event} (functions have no network access)")
        elif event == "ctypes.dlopen":
            raise PermissionError("blocked: loading native libraries")

    sys.addaudithook(hook)


def decode(package):
    return {
        "descriptor": package["descriptor"],
        "annotations": package["annotations"],
        "files": {f["path"]: base64.b64decode(f["data"]) for f in package["files"]},
    }


def encode(package):
    if not isinstance(package, dict) or set(package) - {"descriptor", "annotations", "files"}:
        fail("transform must return None or the package: a dict with descriptor, annotations, files", 3)
    files = package.get("files", {})
    if not isinstance(files, dict):
        fail("package['files'] must be a dict of path -> bytes", 3)
    out = []
    for path, data in files.items():
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(path, str) or not isinstance(data, (bytes, bytearray)):
            fail(f"package['files'][{path!r}] must be bytes or str", 3)
        out.append({"path": path, "data": base64.b64encode(bytes(data)).decode("ascii")})
    return {"descriptor": package.get("descriptor"), "annotations": package.get("annotations", {}), "files": out}


def main():
    result_fd = os.dup(1)
    os.dup2(2, 1)  # anything the function prints (even from C) lands in the log
    sys.stdout = sys.stderr
    sys.dont_write_bytecode = True
    try:
        request = json.loads(sys.stdin.buffer.read())
        source, entrypoint = request["source"], request["entrypoint"]
        package, context = decode(request["package"]), request["context"]
    except (ValueError, KeyError, TypeError) as exc:
        fail(f"bad request from the service: {exc}", 1)
    guard([os.getcwd()] + ([os.environ["TMPDIR"]] if os.environ.get("TMPDIR") else []),
          request.get("network") is True)
    namespace = {"__name__": "algomint_function", "__file__": request.get("filename", "function.py")}
    try:
        exec(compile(source, namespace["__file__"], "exec"), namespace)
        function = namespace.get(entrypoint)
        if not callable(function):
            fail(f"the source defines no function {entrypoint!r}", 3)
        returned = function(package, context)
        document = {"package": encode(package if returned is None else returned)}
        data = json.dumps(document, ensure_ascii=False).encode()
    except MemoryError:
        fail("function ran out of memory")
    except SystemExit as exc:
        fail(f"function called exit({exc.code!r})")
    except BaseException as exc:  # noqa: BLE001 - everything the user code raises is its failure
        traceback.print_exc()
        fail(f"{type(exc).__name__}: {exc}")
    view = memoryview(data)
    while view:
        view = view[os.write(result_fd, view):]
    os.close(result_fd)
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
