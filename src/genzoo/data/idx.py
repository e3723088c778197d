"""A reader for the IDX format of the MNIST family (LeCun et al.), with no dependency beyond numpy.

An IDX file is a 4-byte magic number — two zero bytes, a type code, the number of dimensions — followed by
one big-endian uint32 per dimension and the payload in C order. Every field is validated, so a truncated,
corrupt or wrong-kind file ends in a ``DataError`` that names the file and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from genzoo.errors import DataError

# type code -> numpy dtype (big-endian, as the format stores it)
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# A header may claim any size; refuse before allocating anything unreasonable.
MAX_PAYLOAD_BYTES = 1 << 31


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in .gz."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file.") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}).") from None
    if path.suffix == ".gz":
        limit = MAX_PAYLOAD_BYTES + 4 + 4 * 255  # the largest IDX file genzoo accepts: no decompression bomb
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
                data = f.read(limit + 1)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a valid gzip file, or cut off ({e}).") from None
        if len(data) > limit:
            raise DataError(f"{path}: decompresses to more than {limit} bytes, more than genzoo accepts.")
        return data
    return raw


def parse_idx(data: bytes, name: str = "<bytes>", expect_ndim: int | None = None,
              expect_dtype: np.dtype | None = None) -> np.ndarray:
    """Parse IDX bytes into an array, checking magic, type, dimensions and payload length."""
    if len(data) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(data)} bytes).")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number 0x{data[:4].hex()}).")
    if code not in IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX data type code 0x{code:02x}.")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares zero dimensions.")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{name}: IDX header cut off (needs {header_len} bytes, has {len(data)}).")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{name}: expected a {expect_ndim}-dimensional IDX array but the header has "
                        f"{ndim} dimensions {tuple(shape)}; is this the wrong kind of file?")
    if expect_dtype is not None and dtype != np.dtype(expect_dtype):
        raise DataError(f"{name}: expected IDX data of type {np.dtype(expect_dtype)} but found {dtype}.")
    n_bytes = math.prod(shape) * dtype.itemsize  # Python integers: no overflow whatever the header claims
    # (a zero among huge dimensions claims no bytes, but numpy still refuses the shape: judge the others too)
    if math.prod(max(d, 1) for d in shape) * dtype.itemsize > MAX_PAYLOAD_BYTES:
        raise DataError(f"{name}: IDX header claims an array of shape {tuple(shape)}, larger than genzoo accepts.")
    payload = len(data) - header_len
    if payload != n_bytes:
        what = "truncated" if payload < n_bytes else "has trailing bytes"
        raise DataError(f"{name}: {what}: header shape {tuple(shape)} needs {n_bytes} bytes of data "
                        f"but the file has {payload}.")
    return np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path, sha256: str | None = None, expect_ndim: int | None = None,
             expect_dtype: np.dtype | None = None) -> np.ndarray:
    """Read an IDX file (optionally .gz); if ``sha256`` is given, verify the uncompressed bytes first.

    The checksum is of the uncompressed payload, so a re-compressed copy (Debian's, for one) verifies too.
    """
    data = read_bytes(path)
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise DataError(f"{path}: checksum mismatch (SHA-256 of the uncompressed data is {digest[:16]}…, "
                            f"expected {sha256[:16]}…); the file is corrupt or not the expected one.")
    return parse_idx(data, str(path), expect_ndim, expect_dtype)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of an array (used by tests and to write small data sets)."""
    array = np.asarray(array)
    for code, dtype in IDX_DTYPES.items():
        if dtype.kind == array.dtype.kind and dtype.itemsize == array.dtype.itemsize:
            header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            return header + array.astype(dtype).tobytes()
    raise ValueError(f"no IDX type for dtype {array.dtype}")
