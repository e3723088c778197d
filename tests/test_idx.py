"""The IDX reader: round trips, and every way a file can be broken."""

import gzip
import struct

import numpy as np
import pytest

from genzoo.data.datasets import DATASETS, EMBEDDED_DIR
from genzoo.data.idx import encode_idx, parse_idx, read_idx
from genzoo.errors import DataError


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip_every_type(dtype):
    a = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    b = parse_idx(encode_idx(a))
    assert b.shape == a.shape and b.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, b)


def test_header_is_big_endian():
    data = encode_idx(np.zeros((258, 3), np.uint8))
    assert data[:4] == b"\x00\x00\x08\x02" and struct.unpack(">2I", data[4:12]) == (258, 3)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:3], "too short"),
    (lambda d: b"\x01" + d[1:], "bad magic"),
    (lambda d: d[:2] + b"\x42" + d[3:], "unknown IDX data type"),
    (lambda d: d[:3] + b"\x00" + d[4:], "zero dimensions"),
    (lambda d: d[:10], "header cut off"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d + b"\x00", "trailing bytes"),
])
def test_broken_files_name_the_problem(mutate, message):
    data = encode_idx(np.ones((4, 2, 2), np.uint8))
    with pytest.raises(DataError, match=message) as e:
        parse_idx(mutate(data), name="some-file")
    assert "some-file" in str(e.value)


def test_wrong_kind_of_file(tmp_path):
    labels = tmp_path / "labels.gz"
    labels.write_bytes(gzip.compress(encode_idx(np.arange(10, dtype=np.uint8))))
    with pytest.raises(DataError, match="3-dimensional.*wrong kind") as e:
        read_idx(labels, expect_ndim=3)
    assert str(labels) in str(e.value)
    floats = tmp_path / "floats"
    floats.write_bytes(encode_idx(np.zeros((2, 2, 2), np.float32)))
    with pytest.raises(DataError, match="expected IDX data of type uint8"):
        read_idx(floats, expect_ndim=3, expect_dtype=np.uint8)


def test_huge_claimed_size_is_refused_before_allocating():
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2**31 - 1, 2**31 - 1, 2**31 - 1)
    with pytest.raises(DataError, match="larger than genzoo accepts"):
        parse_idx(header + b"\x00" * 16)


def test_corrupt_and_cut_off_gzip(tmp_path):
    good = gzip.compress(encode_idx(np.ones((50, 28, 28), np.uint8)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_idx(cut)
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_idx(garbage)
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "absent.gz")


def test_checksum_mismatch(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(encode_idx(np.ones((3, 2, 2), np.uint8))))
    with pytest.raises(DataError, match="checksum mismatch"):
        read_idx(path, sha256="0" * 64)


def test_embedded_mnist_matches_its_published_checksums():
    import hashlib
    spec = DATASETS["mnist"]
    for role, (stem, sha) in spec.files.items():
        data = gzip.decompress((EMBEDDED_DIR / "mnist" / f"{stem}.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == sha
    # the value the original distribution is known by (shared/data/README.md)
    images = gzip.decompress((EMBEDDED_DIR / "mnist" / "train-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.md5(images).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"
