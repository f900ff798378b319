"""The job kind: a command changes the unpacked package; limits, links and escapes fail precisely."""

from __future__ import annotations

import os
import sys
import time
import uuid

import pytest

from packer.plugin import PluginError
from plugins import job as job_kind
from plugins.conftest import processes_with
from plugins.job.runner import JobSpec, LocalRunner

PY = sys.executable


def _job(make_artifact, code: str, files: dict[str, bytes] | None = None, **options):
    return make_artifact("job", {"command": [PY, "-c", code], **options}, files)


async def test_command_transforms_the_package_in_place(package, context, logs, make_artifact, make_env):
    code = (
        "import json, os, pathlib\n"
        "d = json.load(open('algorithm.json')); d['parameters']['site'] = json.loads(os.environ['ALGOMINT_CONTEXT'])['params']['site']\n"
        "json.dump(d, open('algorithm.json', 'w'))\n"
        "pathlib.Path('files/business').mkdir()\n"
        "pathlib.Path('files/business/rules.txt').write_text(open(os.environ['ALGOMINT_PLUGIN_DIR'] + '/rules.txt').read())\n"
        "pathlib.Path('files/model.txt').unlink()\n"
        "print('done, HOME is', os.environ['HOME'])\n"
    )
    plugin = job_kind.setup(_job(make_artifact, code, {"rules.txt": b"deny all"}), make_env())
    out = await plugin.apply(package, context)
    assert out.descriptor["parameters"] == {"threshold": 0.5, "site": "hq"}
    assert out.descriptor["x-kept"] == [1, 2]
    assert {p: f.data for p, f in out.files.items()} == {"business/rules.txt": b"deny all"}
    assert out.annotations == {"org.example": "kept"}
    assert any("done, HOME is" in line for line in logs)


async def test_placeholders_in_argv(package, context, make_artifact, make_env):
    art = make_artifact("job", {"command": [PY, "{plugin}/t.py", "{package}"]},
                        {"t.py": b"import sys, pathlib; pathlib.Path(sys.argv[1], 'files', 'x.txt').write_text('{ok}')"})
    out = await job_kind.setup(art, make_env()).apply(package, context)
    assert out.files["x.txt"].data == b"{ok}"


async def test_environment_is_scrubbed(package, context, make_artifact, make_env, monkeypatch):
    monkeypatch.setenv("ALGOMINT_STORAGE__PASSWORD", "hunter2")
    code = "import os, pathlib; pathlib.Path('files/env.txt').write_text(repr(sorted(os.environ)))"
    out = await job_kind.setup(_job(make_artifact, code), make_env()).apply(package, context)
    names = eval(out.files["env.txt"].data)  # noqa: S307 - our own repr
    assert "ALGOMINT_STORAGE__PASSWORD" not in names and "PATH" in names


@pytest.mark.parametrize("code,options,message", [
    ("import sys; print('boom'); sys.exit(3)", {}, "job exited with status 3"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", {}, "killed by SIGTERM"),
    ("while True: pass", {"timeout": 0.5}, "timed out after 0.5s"),
    ("import sys\nwhile True: sys.stdout.write('x' * 65536)", {}, "more than 4096 bytes of output"),
    ("open('../escape.txt', 'w').write('x')", {}, "wrote outside its work directory: escape.txt"),
    ("import os; os.symlink('/etc/passwd', 'files/passwd')", {}, "link out of the work directory: files/passwd -> /etc/passwd"),
    ("import os; os.symlink('model.txt', 'files/alias')", {}, "links are not allowed"),
    ("import os; os.remove('algorithm.json')", {}, "removed algorithm.json"),
    ("open('algorithm.json', 'w').write('{nope')", {}, "algorithm.json is not valid JSON"),
    ("open('files/big', 'wb').write(b'0' * (1024 * 1024 + 1))", {}, "over the 1048576-byte package cap"),
])
async def test_failures_are_precise(package, context, make_artifact, make_env, code, options, message):
    env = make_env(job={"output_limit": 4096})
    plugin = job_kind.setup(_job(make_artifact, code, **options), env)
    with pytest.raises(PluginError) as info:
        await plugin.apply(package, context)
    assert message in info.value.reason
    assert os.listdir(env.workdir) == []  # the work directory is always removed


@pytest.mark.parametrize("detach", ["", "start_new_session=True"])
async def test_timeout_kills_every_process_of_the_job(package, context, make_artifact, make_env, detach):
    # A grandchild, even one in a session of its own, dies with the job.
    marker = f"algomint-job-{uuid.uuid4().hex}"
    code = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)',"
            f" {marker!r}], {detach}); print('started', flush=True); time.sleep(60)")
    plugin = job_kind.setup(_job(make_artifact, code, timeout=2), make_env())
    with pytest.raises(PluginError, match="timed out after 2s"):
        await plugin.apply(package, context)
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == [], "a process of the job survived its timeout"


async def test_missing_program(package, context, make_artifact, make_env):
    art = make_artifact("job", {"command": ["/nonexistent/tool"]})
    with pytest.raises(PluginError, match="could not start"):
        await job_kind.setup(art, make_env()).apply(package, context)


@pytest.mark.parametrize("options,message", [
    ({"command": []}, "command"),
    ({"command": "echo hi"}, "command"),
    ({"command": ["x"], "env": {"ALGOMINT_X": "1"}}, "reserved"),
    ({"command": ["x"], "shell": True}, "shell"),
])
def test_bad_options(make_artifact, make_env, options, message):
    with pytest.raises(PluginError, match=message):
        job_kind.setup(make_artifact("job", options), make_env())


async def test_local_runner_interface(tmp_path, make_env):
    env = make_env()
    runner = LocalRunner(env.sandbox)
    work = env.sandbox.view(tmp_path)
    result = await runner.run(JobSpec([PY, "-c", "import os; print('hi', os.getcwd())"], tmp_path, work,
                                      {"PATH": "/usr/bin"}, 5, 1024))
    assert result.exit_code == 0 and result.output == f"hi {work}\n".encode() and not result.timed_out
