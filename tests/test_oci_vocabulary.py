"""Unit tests for the error table, the reference grammar and manifest parsing."""

from __future__ import annotations

import json

import pytest

from proxy.oci import mediatypes as mt
from proxy.oci.errors import Errors, ErrorCode, RegistryError
from proxy.oci.manifest import parse_manifest
from proxy.oci.reference import parse_digest, parse_reference, validate_name, validate_tag

SPEC_CODES = {
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED",
    "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
}


def test_error_table_covers_the_spec_codes():
    registered = {v for k, v in vars(Errors).items() if isinstance(v, ErrorCode)}
    assert SPEC_CODES <= {e.code for e in registered}
    for error in registered:
        assert 400 <= error.status < 600 and error.message


def test_error_body_shape():
    exc = RegistryError(Errors.BLOB_UNKNOWN, {"digest": "sha256:x"})
    assert exc.status == 404
    assert exc.body() == {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": {"digest": "sha256:x"}}]}
    assert "detail" not in RegistryError(Errors.DENIED).body()["errors"][0]


@pytest.mark.parametrize("name", ["a", "generic/face-recog", "a.b_c__d-e/f", "x" * 255, "a/b/c/d"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "a/", "/a", "a//b", "../x", "a/../b", "-a", "a-", "x" * 256, "a b", "a:b"])
def test_invalid_names(name):
    with pytest.raises(RegistryError) as info:
        validate_name(name)
    assert info.value.code == "NAME_INVALID"


@pytest.mark.parametrize("tag,ok", [("v1", True), ("1.0-soft", True), ("_x", True), (".x", False), ("-x", False),
                                    ("a" * 128, True), ("a" * 129, False), ("a/b", False), ("", False)])
def test_tags(tag, ok):
    if ok:
        assert validate_tag(tag) == tag
    else:
        with pytest.raises(RegistryError):
            validate_tag(tag)


@pytest.mark.parametrize("digest", ["sha256:xyz", "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha256:" + "a" * 63, "nocolon", "sha512:" + "a" * 64])
def test_bad_digests(digest):
    with pytest.raises(RegistryError) as info:
        parse_digest(digest)
    assert info.value.code == "DIGEST_INVALID"


def test_parse_reference():
    ref = parse_reference("images/face-recog:v1")
    assert (ref.name, ref.tag, ref.digest) == ("images/face-recog", "v1", None)
    digest = "sha256:" + "a" * 64
    ref = parse_reference(f"images/face-recog@{digest}")
    assert (ref.name, ref.reference) == ("images/face-recog", digest)
    assert parse_reference("plugins/door-form").tag == "latest"
    assert str(parse_reference("a/b:1")) == "a/b:1"


def _manifest(**overrides) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_EMPTY, "digest": "sha256:" + "4" * 64, "size": 2},
        "layers": [],
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def test_parse_manifest_artifact_type_and_subject():
    subject = {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 10}
    parsed = parse_manifest(_manifest(artifactType="application/x", subject=subject), mt.OCI_MANIFEST)
    assert parsed.artifact_type == "application/x"
    assert parsed.subject is not None and parsed.subject.digest == subject["digest"]
    assert parse_manifest(_manifest(), None).artifact_type == mt.OCI_EMPTY


@pytest.mark.parametrize(
    "data,content_type",
    [
        (b"[]", mt.OCI_MANIFEST),
        (b"\xff\xfe", mt.OCI_MANIFEST),
        (_manifest(schemaVersion=1), mt.OCI_MANIFEST),
        (_manifest(), mt.OCI_INDEX),
        (_manifest(layers="nope"), mt.OCI_MANIFEST),
        (_manifest(config={"mediaType": "x", "digest": "sha256:zz", "size": 1}), mt.OCI_MANIFEST),
        (_manifest(config={"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": -1}), mt.OCI_MANIFEST),
        (_manifest(mediaType="application/json"), "application/json"),
        (_manifest(annotations={"a": 1}), mt.OCI_MANIFEST),
    ],
)
def test_parse_manifest_rejects(data, content_type):
    with pytest.raises(RegistryError) as info:
        parse_manifest(data, content_type)
    assert info.value.code == "MANIFEST_INVALID"
