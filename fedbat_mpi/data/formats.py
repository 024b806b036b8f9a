"""Readers for the data sets' standard files: IDX, MATLAB v5 .mat, CIFAR binary and CIFAR python batches.

Every reader raises UsageError with one line naming the file and what was expected when a file is
missing, truncated or not in the expected format.
"""

import gzip
import io
import pickle
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedbat_mpi.errors import UsageError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

CIFAR_PIXELS = 3 * 32 * 32


def read_file(path: Path) -> bytes:
    """The bytes of `path`, gunzipped when they start with the gzip magic."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
    except (EOFError, zlib.error) as e:
        raise UsageError(f"{path}: expected a complete gzip file: {e}") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes with `ndim` dimensions (magic 0x0000080N), gzipped or not."""
    data = read_file(path)
    magic = data[:4].hex()
    if magic != f"000008{ndim:02x}":
        raise UsageError(f"{path}: expected an IDX file with magic 000008{ndim:02x}, got {magic or 'an empty file'}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UsageError(f"{path}: expected a {header}-byte IDX header, got {len(data)} bytes")
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    if len(data) != header + int(np.prod(shape)):
        raise UsageError(f"{path}: expected {header + int(np.prod(shape))} bytes for shape {shape}, got {len(data)}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy()


# MATLAB v5 element types (miXXX) and array classes (mxXXX) as numpy dtypes.
_MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MX_DTYPES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MAT_COMPLEX = 0x0800


def read_mat_v5(path: Path) -> dict[str, np.ndarray]:
    """The real numeric matrices of a MATLAB v5 .mat file, by name (other variables are skipped).

    Handles both byte orders, small data elements and zlib-compressed (miCOMPRESSED) variables;
    arrays keep MATLAB's shape (column-major data, as numpy Fortran order) and class dtype, and may be
    read-only views of the file's bytes.
    """
    data = read_file(path)
    endian = data[126:128]
    if len(data) < 128 or endian not in (b"IM", b"MI"):
        raise UsageError(f"{path}: expected a MATLAB v5 .mat file (128-byte header ending in IM or MI)")
    order = "<" if endian == b"IM" else ">"
    version = struct.unpack_from(order + "H", data, 124)[0]
    if version != 0x0100:
        raise UsageError(f"{path}: expected MATLAB format v5 (save -v7), got version {version:#06x} (v7.3 is HDF5)")
    arrays: dict[str, np.ndarray] = {}
    for mtype, body in _mat_elements(memoryview(data), 128, order, path):
        if mtype == _MI_COMPRESSED:
            try:
                inner = zlib.decompress(body)
            except zlib.error as e:
                raise UsageError(f"{path}: expected a zlib stream in a compressed variable: {e}") from None
            elements = list(_mat_elements(memoryview(inner), 0, order, path))
        else:
            elements = [(mtype, body)]
        for inner_type, inner_body in elements:
            if inner_type == _MI_MATRIX:
                arrays.update(_mat_matrix(inner_body, order, path))
    return arrays


def _mat_elements(buf: memoryview, pos: int, order: str, path: Path) -> Iterator[tuple[int, memoryview]]:
    """(type, payload) of the data elements in buf[pos:], regular or small (payload in the tag)."""
    while pos < len(buf):
        if pos + 8 > len(buf):
            raise UsageError(f"{path}: expected an 8-byte MATLAB element tag at byte {pos}, file is truncated")
        mtype, nbytes = struct.unpack_from(order + "II", buf, pos)
        if mtype >> 16:
            small_size, small_type = mtype >> 16, mtype & 0xFFFF
            yield small_type, buf[pos + 4 : pos + 4 + small_size]
            pos += 8
            continue
        start, end = pos + 8, pos + 8 + nbytes
        if end > len(buf):
            raise UsageError(f"{path}: expected {nbytes} bytes of MATLAB element data at byte {start}, truncated")
        yield mtype, buf[start:end]
        pos = end if mtype == _MI_COMPRESSED else start + (nbytes + 7) // 8 * 8


def _mat_matrix(body: memoryview, order: str, path: Path) -> dict[str, np.ndarray]:
    """{name: array} for a real numeric miMATRIX payload, {} for other array classes."""
    parts = list(_mat_elements(body, 0, order, path))
    if len(parts) < 3 or len(parts[0][1]) < 4:
        raise UsageError(f"{path}: expected flags, dimensions and name in a MATLAB matrix")
    flags = struct.unpack_from(order + "I", parts[0][1])[0]
    if flags & 0xFF not in _MX_DTYPES:
        return {}
    name = bytes(parts[2][1]).decode("ascii", "replace")
    if flags & _MAT_COMPLEX or len(parts) < 4:
        raise UsageError(f"{path}: variable {name!r}: expected a real numeric matrix")
    shape = tuple(int(d) for d in _mat_values(parts[1], order, path, name))
    values = _mat_values(parts[3], order, path, name)
    if values.size != int(np.prod(shape)):
        expected = int(np.prod(shape))
        raise UsageError(f"{path}: variable {name!r}: expected {expected} values for shape {shape}, got {values.size}")
    return {name: values.astype(_MX_DTYPES[flags & 0xFF], copy=False).reshape(shape, order="F")}


def _mat_values(element: tuple[int, memoryview], order: str, path: Path, name: str) -> np.ndarray:
    """The numbers of a numeric data element (a read-only view of the file's bytes)."""
    mtype, payload = element
    if mtype not in _MI_DTYPES or len(payload) % np.dtype(_MI_DTYPES[mtype]).itemsize:
        got = f"type {mtype} of {len(payload)} bytes"
        raise UsageError(f"{path}: variable {name!r}: expected a numeric data element, got {got}")
    return np.frombuffer(payload, order + _MI_DTYPES[mtype])


def read_cifar_bin(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR binary records (label bytes, then 3×32×32 pixels): uint8 images N×3×32×32 and the last label byte."""
    data = read_file(path)
    record = label_bytes + CIFAR_PIXELS
    if not data or len(data) % record:
        raise UsageError(f"{path}: expected CIFAR binary records of {record} bytes, got {len(data)} bytes")
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy(), rows[:, label_bytes - 1].astype(np.int64)


_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers and numpy arrays, and refuses every other global."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}") from None


def read_cifar_pickle(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR python batch (pickled dict with b'data' N×3072 uint8 and labels under `label_key`)."""
    data = read_file(path)
    expected = f"a CIFAR python batch (pickled dict with b'data' and {label_key!r})"
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # a malformed pickle can fail in many ways; all mean "not a CIFAR batch"
        raise UsageError(f"{path}: expected {expected}: {e}") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise UsageError(f"{path}: expected {expected}")
    images, labels = batch[b"data"], np.asarray(batch[label_key])
    if not (
        isinstance(images, np.ndarray)
        and images.dtype == np.uint8
        and images.ndim == 2
        and images.shape[1] == CIFAR_PIXELS
        and labels.shape == images.shape[:1]
        and np.issubdtype(labels.dtype, np.integer)
    ):
        raise UsageError(f"{path}: expected {expected}: uint8 data of N×{CIFAR_PIXELS} and N integer labels")
    return images.reshape(-1, 3, 32, 32).copy(), labels.astype(np.int64)
