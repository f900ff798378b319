"""The file kind: put files, merge patches, directory layers, path validation."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from packer.plugin import PluginError
from plugins import file as file_kind
from plugins.file.archive import UNPACK_ANNOTATION
from plugins.file.mergepatch import merge_patch


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buf.getvalue()


async def test_no_options_puts_every_file_replacing_same_names(make_artifact, package, context, make_env):
    plugin = file_kind.setup(make_artifact("file", files={"form.json": b"{}", "model.txt": b"new"}), make_env())
    out = await plugin.apply(package, context)
    assert {p: f.data for p, f in out.files.items()} == {"model.txt": b"new", "form.json": b"{}"}
    assert out.descriptor["x-kept"] == [1, 2]


async def test_put_at_path_and_merge_patch_descriptor_and_json_file(make_artifact, package, context, make_env):
    package.put("ui/config.json", json.dumps({"theme": "dark", "drop": 1, "nested": {"a": 1}}).encode())
    files = {
        "form.json": b'{"title": "door"}',
        "params.json": json.dumps({"parameters": {"threshold": 0.8, "site": "hq"}, "platform": None}).encode(),
        "ui.json": json.dumps({"drop": None, "nested": {"b": 2}}).encode(),
    }
    options = {"files": [
        {"source": "form.json", "path": "business/form.json"},
        {"source": "params.json", "merge_patch": "descriptor"},
        {"source": "ui.json", "merge_patch": "ui/config.json"},
    ]}
    out = await file_kind.setup(make_artifact("file", options, files), make_env()).apply(package, context)
    assert out.files["business/form.json"].data == b'{"title": "door"}'
    assert "params.json" not in out.files  # only listed actions run
    assert out.descriptor["parameters"] == {"threshold": 0.8, "site": "hq"}
    assert "platform" not in out.descriptor and out.descriptor["x-kept"] == [1, 2]
    assert json.loads(out.files["ui/config.json"].data) == {"theme": "dark", "nested": {"a": 1, "b": 2}}


@pytest.mark.parametrize("target,patch,expected", [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "foo"}, None, None),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_rfc7396_examples(target, patch, expected):
    assert merge_patch(target, patch) == expected


@pytest.mark.parametrize("options,files,message", [
    ({"files": [{"source": "missing.json"}]}, {"a.json": b"{}"}, "no file 'missing.json'"),
    ({"files": [{"source": "a.json", "path": "../etc/passwd"}]}, {"a.json": b"{}"}, "path traversal"),
    ({"files": [{"source": "a.json", "path": "/etc/passwd"}]}, {"a.json": b"{}"}, "absolute path"),
    ({"files": [{"source": "a.json", "merge_patch": "x/../../y"}]}, {"a.json": b"{}"}, "path traversal"),
    ({"files": [{"source": "a.json", "merge_patch": "descriptor"}]}, {"a.json": b"{nope"}, "not valid JSON"),
    ({"files": [{"source": "a.json", "path": "x", "merge_patch": "descriptor"}]}, {"a.json": b"{}"}, "not both"),
    ({"bogus": 1}, {}, "bogus"),
])
def test_bad_options_are_refused_at_setup(make_artifact, options, files, message, make_env):
    with pytest.raises(PluginError) as info:
        file_kind.setup(make_artifact("file", options, files), make_env())
    assert message in info.value.reason


async def test_merge_patch_cannot_make_descriptor_a_non_object(make_artifact, package, context, make_env):
    plugin = file_kind.setup(make_artifact("file", {"files": [{"source": "p.json", "merge_patch": "descriptor"}]},
                                      {"p.json": b"[1]"}), make_env())
    with pytest.raises(PluginError, match="non-object"):
        await plugin.apply(package, context)


async def test_directory_layer_is_expanded_under_its_path(make_artifact, package, context, make_env):
    data = _tar([("ui/form.json", b"{}"), ("ui/i18n/zh.json", b'{"k":"v"}')])
    art = make_artifact("file", files={"ui": data}, annotations={"ui": {UNPACK_ANNOTATION: "true"}})
    out = await file_kind.setup(art, make_env()).apply(package, context)
    assert {p: f.data for p, f in out.files.items() if p.startswith("ui/")} == {
        "ui/form.json": b"{}", "ui/i18n/zh.json": b'{"k":"v"}'}


@pytest.mark.parametrize("member,message", [
    (("ui/../../escape", b"x"), "path traversal"),
    (("/abs/file", b"x"), None),  # the leading slash is stripped: stays inside
])
async def test_directory_layer_member_paths(make_artifact, package, context, make_env, member, message):
    art = make_artifact("file", files={"ui": _tar([member])}, annotations={"ui": {UNPACK_ANNOTATION: "true"}})
    plugin = file_kind.setup(art, make_env())
    if message is None:
        out = await plugin.apply(package, context)
        assert "ui/file" in out.files
    else:
        with pytest.raises(PluginError, match=message):
            await plugin.apply(package, context)


async def test_directory_layer_refuses_links(make_artifact, package, context, make_env):
    link = tarfile.TarInfo("ui/passwd")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    art = make_artifact("file", files={"ui": _tar([link])}, annotations={"ui": {UNPACK_ANNOTATION: "true"}})
    with pytest.raises(PluginError, match="link to '/etc/passwd'"):
        await file_kind.setup(art, make_env()).apply(package, context)


async def test_directory_layer_bomb_stops_at_the_cap(make_artifact, package, context, make_env):
    data = _tar([("ui/big", b"\0" * (context.cap + 1))])
    art = make_artifact("file", files={"ui": data}, annotations={"ui": {UNPACK_ANNOTATION: "true"}})
    with pytest.raises(PluginError, match="cap|expands past"):
        await file_kind.setup(art, make_env()).apply(package, context)
