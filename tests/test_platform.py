"""Platform names (``packer.platform``), the descriptor's ``runtime.images[].platforms``,
licensed tags for a subset, and a chain's ``platforms`` filter end to end."""

from __future__ import annotations

import json
import uuid

import pytest

from packer.chains import ChainError, ChainSpec, load_chains_file
from packer.descriptor import AlgorithmDescriptor, DescriptorError
from packer.fullbuild.names import Namespaces, runtime_images
from packer.platform import ANNOTATION_FEATURES, Platform, PlatformError
from tests.support.packer import DESCRIPTOR, jobs, push_generic, push_plugin, wait_jobs_done


@pytest.mark.parametrize("name, expected", [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
    ("linux/amd64+cuda12", Platform("linux", "amd64", features=frozenset({"cuda12"}))),
    ("linux/amd64+trt8+cuda12", Platform("linux", "amd64", features=frozenset({"cuda12", "trt8"}))),
])
def test_names_parse_and_print(name, expected):
    assert Platform.parse(name) == expected
    assert Platform.parse(str(expected)) == expected


@pytest.mark.parametrize("bad", ["", "linux", "linux/", "/amd64", "Linux/amd64", "linux/amd64/v8/x", "linux/amd64+",
                                 "linux/amd64+cu da", "linux/amd64\n", "../etc/passwd", "a/" + "b" * 80, 42, None,
                                 "linux/amd64" + "+f" * 17])
def test_malformed_names_are_refused(bad):
    with pytest.raises(PlatformError):
        Platform.parse(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name, entry, notes, selected", [
    ("linux/amd64", {"os": "linux", "architecture": "amd64"}, None, True),
    ("linux/arm64", {"os": "linux", "architecture": "arm64", "variant": "v8"}, None, True),
    ("linux/arm64/v7", {"os": "linux", "architecture": "arm64", "variant": "v8"}, None, False),
    ("linux/amd64", {"os": "linux", "architecture": "amd64", "features": ["cuda12"]}, None, False),
    ("linux/amd64+cuda12", {"os": "linux", "architecture": "amd64", "features": ["cuda12"]}, None, True),
    ("linux/amd64+cuda12", {"os": "linux", "architecture": "amd64"}, {ANNOTATION_FEATURES: "cuda12"}, True),
    ("linux/amd64+cuda12", {"os": "linux", "architecture": "amd64"}, {ANNOTATION_FEATURES: " cuda12 , trt8"}, False),
    ("linux/amd64", {"os": "windows", "architecture": "amd64"}, None, False),
])
def test_a_name_selects_index_entries(name, entry, notes, selected):
    platform = Platform.of_entry(entry, notes)
    assert platform is not None
    assert Platform.parse(name).selects(platform) is selected


@pytest.mark.parametrize("entry", [None, {}, {"os": "linux"}, {"os": 1, "architecture": "amd64"}, "linux/amd64"])
def test_entries_without_a_platform(entry):
    assert Platform.of_entry(entry) is None


def _descriptor(**image):
    return {**DESCRIPTOR, "runtime": {"images": [{"ref": "images/face:v1", "models": ["*.onnx"], **image}]}}


@pytest.mark.parametrize("platforms, message", [
    ([], "at least one"),
    (["linux"], "os/arch"),
    (["linux/amd64", "linux/amd64"], "twice"),
    ("linux/amd64", "list"),
])
def test_descriptor_platforms_are_checked(platforms, message):
    with pytest.raises(DescriptorError) as err:
        AlgorithmDescriptor.parse(_descriptor(platforms=platforms))
    assert err.value.field and err.value.field.startswith("runtime.images.0.platforms")
    assert message in err.value.message


@pytest.mark.parametrize("platform", ["x86", "linux/amd64 cuda", "Linux/AMD64"])
def test_the_package_platform_is_a_platform_name(platform):
    with pytest.raises(DescriptorError) as err:
        AlgorithmDescriptor.parse({**DESCRIPTOR, "platform": platform})
    assert err.value.field == "platform"
    assert AlgorithmDescriptor.parse({**DESCRIPTOR, "platform": "linux/arm64+npu"}).platform == "linux/arm64+npu"


def test_descriptor_platforms_are_kept_and_name_the_licensed_tag():
    doc = AlgorithmDescriptor.parse(_descriptor(platforms=["linux/arm64", "linux/amd64+cuda12"])).to_dict()
    assert doc["runtime"]["images"][0]["platforms"] == ["linux/arm64", "linux/amd64+cuda12"]
    assert "platforms" not in AlgorithmDescriptor.parse(_descriptor()).to_dict()["runtime"]["images"][0]
    ref, = runtime_images(doc, Namespaces())
    assert ref.licensed_tag("soft") == "v1-linux-amd64_cuda12.linux-arm64-soft"
    ref, = runtime_images(_descriptor(), Namespaces())
    assert ref.licensed_tag("soft") == "v1-soft"
    many = [f"linux/arm64/v{i}" for i in range(10)]
    ref, = runtime_images(_descriptor(platforms=many), Namespaces())
    tag = ref.licensed_tag("soft")
    assert tag.startswith("v1-p") and tag.endswith("-soft") and len(tag) == len("v1-p") + 12 + len("-soft")


def test_chain_platform_filter_rule():
    spec = ChainSpec(name="edge", match=["generic/*"], plugins=["plugins/x:1"], platforms=["linux/arm64", "linux/amd64+cuda12"])
    assert spec.takes_platform("linux/arm64/v8")
    assert spec.takes_platform("linux/amd64+cuda12")
    assert not spec.takes_platform("linux/amd64")
    assert not spec.takes_platform("")
    assert not spec.takes_platform(None)
    assert not spec.takes_platform("not a platform")
    assert ChainSpec(name="all", match=["generic/*"], plugins=["plugins/x:1"]).takes_platform(None)
    with pytest.raises(ValueError):
        ChainSpec(name="bad", match=["generic/*"], plugins=["plugins/x:1"], platforms=["amd64"])


def test_chains_file_platforms(tmp_path):
    path = tmp_path / "chains.toml"
    path.write_text('[[chain]]\nname = "edge"\nmatch = ["generic/*"]\nplugins = ["plugins/x:1"]\n'
                    'platforms = ["linux/arm64", "linux/amd64+cuda12"]\n')
    (spec, line), = load_chains_file(path)
    assert spec.platforms == ["linux/arm64", "linux/amd64+cuda12"] and line == 1
    path.write_text('[[chain]]\nname = "edge"\nmatch = ["generic/*"]\nplugins = ["plugins/x:1"]\n'
                    'platforms = ["arm64"]\n')
    with pytest.raises(ChainError) as err:
        load_chains_file(path)
    assert err.value.field and err.value.field.startswith("platforms") and err.value.line == 1


async def test_a_chain_assembles_only_its_platforms(client, tmp_path):
    uid = uuid.uuid4().hex[:10]
    await push_plugin(client, f"stamp-{uid}", "1.0", "file",
                      {"files": [{"source": "s.txt", "path": "stamp.txt"}]}, {"s.txt": b"stamped"})
    resp = await client.post("/api/v1/chains", json={
        "name": f"edge-{uid}", "match": [f"generic/p{uid}-*"], "plugins": [f"plugins/stamp-{uid}:1.0"],
        "platforms": ["linux/arm64"]})
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["platforms"] == ["linux/arm64"]
    bad = await client.post("/api/v1/chains", json={
        "name": f"bad-{uid}", "match": [f"generic/p{uid}-*"], "plugins": [f"plugins/stamp-{uid}:1.0"],
        "platforms": ["arm64"]})
    assert bad.status in (400, 422)

    arm, amd = f"generic/p{uid}-arm", f"generic/p{uid}-amd"
    await push_generic(client, arm, "1.0", {"m.bin": b"arm"}, tmp_path / "arm",
                       descriptor={**DESCRIPTOR, "platform": "linux/arm64/v8"})
    await push_generic(client, amd, "1.0", {"m.bin": b"amd"}, tmp_path / "amd",
                       descriptor={**DESCRIPTOR, "platform": "linux/amd64+cuda12"})
    done_arm = await wait_jobs_done(client, repository=arm)
    done_amd = await wait_jobs_done(client, repository=amd)
    assert [j["status"] for j in done_arm] == ["succeeded"]
    assert [j["status"] for j in done_amd] == ["skipped"]
    job = (await (await client.get(f"/api/v1/assemblies/{done_amd[0]['id']}")).json())
    assert "linux/amd64+cuda12" in json.dumps(job)
    assert (await client.get(f"/v2/business/edge-{uid}/p{uid}-arm/manifests/1.0")).status == 200
    assert (await client.get(f"/v2/business/edge-{uid}/p{uid}-amd/manifests/1.0")).status == 404
    assert [j["id"] for j in await jobs(client, status="skipped", chain=f"edge-{uid}")] == [done_amd[0]["id"]]
