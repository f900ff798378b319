"""Units of rights through derivation: glob coverage by grant patterns, business names,
and the descriptor fields plugins may not touch."""

from __future__ import annotations

import re

import pytest

from packer.assembly import _check_models_kept, _model_fields
from packer.chains import glob_match
from packer.fullbuild.names import Namespaces, PackageName
from packer.package import Package, PackageError
from proxy.auth.coverage import MAX_STATES, CoverageError, uncovered
from proxy.auth.patterns import compile_pattern
from tests.conftest import metadata_database

# A repository name (distribution-spec grammar).
NAME = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")


@pytest.mark.parametrize("glob,patterns,within,covered", [
    ("generic/**", ["generic/**"], "**", True),
    ("generic/*", ["generic/**"], "**", True),
    ("generic/team-a/**", ["generic/team-a/**"], "**", True),
    ("generic/team-a/face", ["generic/team-a/*"], "**", True),
    ("generic/team-a/face", ["generic/**/face"], "**", True),
    ("generic/?ace", ["generic/*"], "**", True),
    ("generic/a**", ["generic/a*", "generic/a*/**"], "**", True),  # ** inside a segment, both halves
    ("**", ["**"], "**", True),
    ("**", ["generic/**"], "generic/**", True),  # only generic/ is read: the rest doesn't count
    ("generic/**", ["generic/team-a/**"], "**", False),
    ("generic/*", ["generic/team-a/*"], "**", False),
    ("generic/team-a/**", ["generic/team-a/*"], "**", False),  # deeper names escape `*`
    ("generic/team-*/**", ["generic/team-a/**", "generic/team-b/**"], "**", False),
    ("generic/a**", ["generic/a*/**"], "**", False),
    ("gen*", ["generic/**"], "**", False),
    ("**", ["generic/**", "images/**"], "generic/**", True),
])
def test_coverage(glob, patterns, within, covered):
    example = uncovered(glob, patterns, within)
    assert (example is None) is covered, example
    if example is not None:
        # The example is real evidence: the glob and `within` match it, no pattern does.
        assert glob_match(glob, example) and compile_pattern(within).fullmatch(example)
        assert not any(compile_pattern(p).fullmatch(example) for p in patterns)
        assert NAME.fullmatch(example)


def test_coverage_names_a_plausible_repository():
    assert uncovered("generic/**", ["generic/team-a/**"]) == "generic/x"
    assert NAME.fullmatch(uncovered("generic/team-*/**", ["generic/team-a/**"]) or "")
    # Separators follow the name grammar: "a__b" and "a--b" are names, "a_" and "a.-b" are not.
    assert uncovered("generic/a*", ["generic/a", "generic/a*x", "generic/a*y"]) == "generic/az"
    assert uncovered("generic/a_*", ["generic/a_x*"]) == "generic/a_y"


def test_coverage_refuses_what_it_cannot_decide(monkeypatch):
    monkeypatch.setattr("proxy.auth.coverage.MAX_STATES", 5)
    with pytest.raises(CoverageError):
        uncovered("generic/**/a/**/b", ["generic/*/a/**", "generic/**/b", "generic/x*/**"])
    assert MAX_STATES > 5


def test_bad_grant_patterns_are_errors_not_coverage():
    with pytest.raises(ValueError):
        uncovered("generic/*", ["generic/a**"])


def test_business_package_names_keep_every_segment():
    name = PackageName.parse("business/door/team-a/face:1.0", Namespaces())
    assert (name.system, name.algorithm, name.version) == ("door", "team-a/face", "1.0")


def _package(descriptor: dict) -> Package:
    return Package(descriptor, {}, {})


@pytest.mark.parametrize("after", [
    {"runtime": {"images": [{"ref": "images/a:v1", "models": []}]}},
    {"runtime": {"images": [{"ref": "images/b:v1", "models": ["opt/*.onnx"]}]}},
    {"runtime": {"images": []}},
    {},
    {"runtime": {"images": [{"ref": "images/a:v1", "models": ["opt/*.onnx"]}]}, "models": ["x"]},
])
def test_plugins_may_not_change_models(after):
    before = _model_fields(_package({"runtime": {"images": [{"ref": "images/a:v1", "models": ["opt/*.onnx"]}]}}))
    with pytest.raises(PackageError, match="plugins may not change"):
        _check_models_kept(before, _package(after))


def test_other_descriptor_changes_are_allowed():
    doc = {"runtime": {"images": [{"ref": "images/a:v1", "models": ["opt/*.onnx"]}]}, "parameters": {}}
    before = _model_fields(_package(doc))
    changed = {**doc, "parameters": {"site": "hq"},
               "runtime": {"images": [{"ref": "images/a:v1", "models": ["opt/*.onnx"], "note": "kept"}]}}
    _check_models_kept(before, _package(changed))


async def test_one_build_at_a_time_creates_a_licensed_tag(tmp_path):
    from packer.fullbuild.store import BuildStore
    from proxy.service.policy import SYSTEM

    db = metadata_database(tmp_path / "m.db")
    await db.open()
    try:
        store = BuildStore(db)
        await store.migrate()
        a = await store.create("business/x/y:1", "business/x/y", "1", "soft", "sha256:" + "a" * 64, SYSTEM)
        b = await store.create("business/z/y:1", "business/z/y", "1", "soft", "sha256:" + "b" * 64, SYSTEM)
        assert await store.claim_tag("images/y", "v1-soft", a.id) is None
        assert await store.claim_tag("images/y", "v1-soft", a.id) is None  # a re-run keeps its claim
        assert await store.claim_tag("images/y", "v1-soft", b.id) == a.id  # a is queued: b may not
        await store.fail(a.id, "broken", [])
        assert await store.claim_tag("images/y", "v1-soft", b.id) is None  # a failed: b takes over
        assert await store.requester(a.id) == SYSTEM
    finally:
        await db.close()
