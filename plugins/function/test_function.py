"""The function kind: isolated interpreter, limits, and precise failures."""

from __future__ import annotations

import os

import pytest

from packer.plugin import PluginError
from plugins import function as function_kind


def _fn(make_artifact, source: str, **options):
    return make_artifact("function", options, {"transform.py": source.encode()})


async def test_transform_changes_descriptor_and_files(package, context, logs, make_artifact, make_env):
    source = (
        "def transform(package, context):\n"
        "    package['descriptor']['parameters']['site'] = context['params']['site']\n"
        "    package['files']['business/form.json'] = '{\"system\": \"%s\"}' % context['system']\n"
        "    package['files']['model.txt'] += b'!'\n"
        "    package['annotations']['io.example/x'] = 'y'\n"
        "    print('hello from the function')\n"
    )
    out = await function_kind.setup(_fn(make_artifact, source), make_env()).apply(package, context)
    assert out.descriptor["parameters"] == {"threshold": 0.5, "site": "hq"} and out.descriptor["x-kept"] == [1, 2]
    assert out.files["business/form.json"].data == b'{"system": "door"}'
    assert out.files["model.txt"].data == b"weights!"
    assert out.files["model.txt"].media_type == "application/x-model"  # kept for existing paths
    assert out.annotations == {"org.example": "kept", "io.example/x": "y"}
    assert any("hello from the function" in line for line in logs)


async def test_returning_a_new_package(package, context, make_artifact, make_env):
    source = "def run(p, c):\n    return {'descriptor': {'name': 'n', 'version': 'v'}, 'files': {}}\n"
    out = await function_kind.setup(_fn(make_artifact, source, entrypoint="run"), make_env()).apply(package, context)
    assert out.descriptor == {"name": "n", "version": "v"} and out.files == {} and out.annotations == {}


async def test_environment_and_cwd_are_isolated(package, context, make_artifact, make_env, monkeypatch):
    monkeypatch.setenv("ALGOMINT_STORAGE__PASSWORD", "hunter2")
    source = (
        "import os, sys\n"
        "def transform(p, c):\n"
        "    p['files']['env'] = repr(sorted(os.environ))\n"
        "    p['files']['flags'] = repr((sys.flags.isolated, os.listdir('.')))\n"
        "    open('scratch.txt', 'w').write('inside is fine')\n"
    )
    env = make_env()
    out = await function_kind.setup(_fn(make_artifact, source), env).apply(package, context)
    assert "ALGOMINT_STORAGE__PASSWORD" not in out.files["env"].data.decode()
    assert out.files["flags"].data == b"(1, [])"
    assert os.listdir(env.workdir) == []


@pytest.mark.parametrize("source,options,message", [
    ("def transform(p, c):\n    raise ValueError('bad threshold')\n", {}, "function failed: ValueError: bad threshold"),
    ("def transform(p, c):\n    while True: pass\n", {"timeout": 0.5}, "timed out after 0.5s"),
    ("def transform(p, c):\n    return [1, 2]\n", {}, "must return None or the package"),
    ("def transform(p, c):\n    p['files']['../x'] = b'1'\n", {}, "path traversal"),
    ("def transform(p, c):\n    p['files']['/etc/x'] = b'1'\n", {}, "absolute path"),
    ("def transform(p, c):\n    p['files']['big'] = b'0' * (2 * 1024 * 1024)\n", {}, "over the 1048576-byte package cap"),
    ("def transform(p, c):\n    open('../outside.txt', 'w').write('x')\n", {}, "blocked: writing outside the work directory"),
    ("def transform(p, c):\n    open('/tmp/algomint-fn-escape', 'w')\n", {}, "blocked: writing outside the work directory"),
    ("import os\ndef transform(p, c):\n    os.symlink('/etc/passwd', 'x')\n", {}, "links are not allowed"),
    ("import subprocess\ndef transform(p, c):\n    subprocess.run(['true'])\n", {}, "blocked: subprocess.Popen"),
    ("import socket\ndef transform(p, c):\n    socket.create_connection(('127.0.0.1', 9))\n", {}, "no network access"),
    ("def transform(p, c):\n    x = bytearray(4 * 1024 ** 3)\n", {}, "ran out of memory"),
    ("import sys\ndef transform(p, c):\n    sys.exit(4)\n", {}, "called exit(4)"),
    ("def transform(p, c):\n    p['descriptor'] = b'x'\n", {}, "not JSON serializable"),
    ("def other(p, c):\n    pass\n", {}, "defines no function 'transform'"),
])
async def test_failures_are_precise(package, context, make_artifact, make_env, source, options, message):
    env = make_env(function={"memory_mb": 256})
    with pytest.raises(PluginError) as info:
        await function_kind.setup(_fn(make_artifact, source, **options), env).apply(package, context)
    assert message in info.value.reason
    assert os.listdir(env.workdir) == []
    assert not os.path.exists("/tmp/algomint-fn-escape")


async def test_cpu_time_limit(package, context, make_artifact, make_env):
    env = make_env(function={"cpu_seconds": 1, "timeout": 30})
    with pytest.raises(PluginError, match="CPU time limit"):
        await function_kind.setup(_fn(make_artifact, "def transform(p, c):\n    while True: pass\n"), env).apply(package, context)


async def test_one_call_leaves_nothing_for_the_next(package, context, make_artifact, make_env):
    env = make_env()
    first = "import builtins\ndef transform(p, c):\n    builtins.LEAK = 1\n    open('state', 'w').write('x')\n"
    second = "import builtins, os\ndef transform(p, c):\n    p['files']['seen'] = repr((hasattr(builtins, 'LEAK'), os.listdir('.')))\n"
    await function_kind.setup(_fn(make_artifact, first), env).apply(package.copy(), context)
    out = await function_kind.setup(_fn(make_artifact, second), env).apply(package.copy(), context)
    assert out.files["seen"].data == b"(False, [])"


@pytest.mark.parametrize("files,options,message", [
    ({"a.py": b"x = (", }, {}, "does not compile"),
    ({"a.py": b"", "b.py": b""}, {}, "has 2 .py files"),
    ({"a.py": b""}, {"source": "c.py"}, "no file 'c.py'"),
    ({"a.py": b""}, {"entrypoint": "not valid"}, "entrypoint"),
])
def test_bad_artifacts(make_artifact, make_env, files, options, message):
    with pytest.raises(PluginError, match=message):
        function_kind.setup(make_artifact("function", options, files), make_env())
