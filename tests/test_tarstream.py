"""The tar rewriter: selected files sealed, every other byte unchanged, bad tars refused."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from packer.licensing.envelope import Decryptor, Encryptor
from packer.tarstream import TarError, TarLimits, compile_globs, rewrite_tar, scan_tar
from tests.support.tarlayers import MODELS, layer_with_models, plain_layer, raw_member_slices

KEY, KEY_ID = os.urandom(32), os.urandom(16)


def _rewrite(tar: bytes, patterns=(MODELS,), limits=TarLimits()):
    out = bytearray()
    stats = rewrite_tar(io.BytesIO(tar), out.extend, compile_globs(patterns),
                        lambda name, size: Encryptor(KEY, KEY_ID, size, 4096), limits)
    return bytes(out), stats


@pytest.mark.parametrize(
    "pattern,path,expected",
    [
        ("opt/models/*.onnx", "opt/models/a.onnx", True),
        ("opt/models/*.onnx", "opt/models/sub/a.onnx", False),
        ("opt/**/*.onnx", "opt/models/sub/a.onnx", True),
        ("opt/**/*.onnx", "opt/a.onnx", True),
        ("./opt/models/?.bin", "opt/models/a.bin", True),
        ("/opt/models/[ab].bin", "opt/models/c.bin", False),
        ("**", "anything/at/all", True),
    ],
)
def test_globs(pattern, path, expected):
    assert compile_globs([pattern])(path) is expected


def test_rewrite_keeps_every_other_byte(tmp_path):
    tar, models = layer_with_models(tmp_path)
    new, stats = _rewrite(tar)
    assert sorted(stats.encrypted) == sorted(models)
    assert any("face-link.onnx" in w for w in stats.warnings) is False  # its target was encrypted
    before, after = raw_member_slices(tar), raw_member_slices(new)
    assert [m.name for m, _ in before] == [m.name for m, _ in after]
    with tarfile.open(fileobj=io.BytesIO(new)) as tf:
        for (old, old_raw), (cur, cur_raw) in zip(before, after):
            if old.name in models:
                assert (cur.mode, cur.uid, cur.gid, cur.mtime, cur.uname) == (old.mode, old.uid, old.gid, old.mtime, old.uname)
                assert {k: v for k, v in cur.pax_headers.items() if k != "size"} == \
                    {k: v for k, v in old.pax_headers.items() if k != "size"}
                sealed = tf.extractfile(cur).read()
                dec = Decryptor(KEY)
                plain = dec.update(sealed)
                dec.finish()
                assert plain == models[old.name]
            else:
                assert cur_raw == old_raw, old.name
    # The end-of-archive region is copied as it was.
    assert new.endswith(b"\0" * 10240)


def test_sparse_and_gnu_members_pass_through(tmp_path):
    tar, _ = layer_with_models(tmp_path)
    new, _ = _rewrite(tar)
    with tarfile.open(fileobj=io.BytesIO(new)) as tf:
        sparse = tf.getmember("sparse-gnu.bin")
        assert sparse.issparse()
        data = tf.extractfile(sparse).read()
        assert len(data) == 3 * 1024 * 1024 and data[1024 * 1024:1024 * 1024 + 6] == b"island"


def test_scan_stops_at_first_match_and_reports_none(tmp_path):
    tar, _ = layer_with_models(tmp_path)
    assert scan_tar(io.BytesIO(tar), compile_globs([MODELS])) is True
    assert scan_tar(io.BytesIO(tar), compile_globs(["nothing/*"])) is False
    assert scan_tar(io.BytesIO(b""), compile_globs([MODELS])) is False


def test_sparse_model_file_is_refused(tmp_path):
    tar, _ = layer_with_models(tmp_path)
    with pytest.raises(TarError, match="sparse"):
        _rewrite(tar, ["sparse-gnu.bin"])


def _raw_member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo("x")
    info.size = len(data)
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    block[0:100] = name.encode().ljust(100, b"\0")
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block) + data + b"\0" * (-len(data) % 512)


@pytest.mark.parametrize("name", ["/etc/passwd", "opt/../../etc/passwd", "../escape"])
def test_unsafe_paths_are_refused(name):
    tar = _raw_member(name, b"x") + b"\0" * 1024
    with pytest.raises(TarError, match="absolute|'..'"):
        scan_tar(io.BytesIO(tar), compile_globs([MODELS]))


def test_limits_and_corruption():
    tar = plain_layer({f"f{i}": b"x" * 100 for i in range(20)})
    with pytest.raises(TarError, match="entries"):
        _rewrite(tar, limits=TarLimits(max_entries=10))
    with pytest.raises(TarError, match="size limit"):
        _rewrite(tar, limits=TarLimits(max_bytes=4096))
    with pytest.raises(TarError, match="truncated"):
        _rewrite(tar[:5000])
    with pytest.raises(TarError, match="no end-of-archive"):
        _rewrite(tar[:1024 * 3])
    corrupt = bytearray(tar)
    corrupt[1030] ^= 0xFF  # inside the second header's name
    with pytest.raises(TarError, match="checksum"):
        _rewrite(bytes(corrupt))
    with pytest.raises(TarError, match="extended tar header"):
        _rewrite(plain_layer({"a" * 300: b"x"}), limits=TarLimits(max_header_bytes=100))
