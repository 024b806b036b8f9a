"""Small data sets written in each official file format, for the loaders' tests and for real runs on
``--dataset fmnist``, ``svhn``, ``cifar10`` or ``cifar100`` without the (large) real files.

- Fashion-MNIST: IDX files (:func:`write_idx`), plain or gzipped as distributed;
- SVHN: MATLAB v5 files (:func:`mat_matrix`, :func:`write_mat`), either byte order, optionally compressed;
- CIFAR-10/100: the binary batches (:func:`write_cifar_bin`) or the python pickles (:func:`write_pickle`,
  also as Python 2's cPickle wrote the official ones).

Each data-set writer (``write_fmnist``, ``write_svhn``, ``write_cifar10``, ``write_cifar100``) draws
uniform pixels and labels from ``seed`` and returns the arrays it wrote, keyed ``train_x``, ``train_y``,
``test_x`` and ``test_y``, in the file's own layout (SVHN's X is 32×32×3×N, its y N×1 in 1..10).
"""

import gzip
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

# MATLAB array classes (mxCLASS) and data types (miTYPE) that the SVHN files use.
MX_CHAR, MX_DOUBLE, MX_UINT8 = 4, 6, 9
MI_UINT8, MI_UINT16, MI_DOUBLE = 2, 4, 9
_MI_DTYPE = {MI_UINT8: "u1", MI_UINT16: "u2", MI_DOUBLE: "f8"}
_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 14, 15

CifarForm = Literal["bin", "python", "python2"]


def _random_arrays(
    seed: int, sizes: dict[str, int], image_shape: tuple[int, ...], classes: int
) -> dict[str, np.ndarray]:
    """``{split}_x`` (uint8 images) and ``{split}_y`` (labels in 0..classes-1) for each split's size."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in sizes.items():
        arrays[f"{split}_x"] = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        arrays[f"{split}_y"] = rng.integers(0, classes, n).astype(np.uint8)
    return arrays


# ---- Fashion-MNIST: IDX ----


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """An IDX file of unsigned bytes (magic ``00 00 08 ndim``, one big-endian uint32 per dimension, the
    data); with ``gz``, gzipped at ``path`` + ``.gz``. Returns the path written."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_fmnist(
    root: Path, n_train: int, n_test: int, seed: int = 0, gz: bool = False
) -> dict[str, np.ndarray]:
    """``root/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``: 28×28 images, labels 0..9."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _random_arrays(seed, {"train": n_train, "test": n_test}, (28, 28), 10)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", arrays[f"{split}_x"], gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", arrays[f"{split}_y"], gz)
    return arrays


# ---- SVHN: MATLAB v5 ----


def _mat_element(mi_type: int, payload: bytes, order: str) -> bytes:
    if len(payload) <= 4:  # small data element: size and type share the tag
        return struct.pack(order + "I", (len(payload) << 16) | mi_type) + payload.ljust(4, b"\0")
    return struct.pack(order + "II", mi_type, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def mat_matrix(name: str, array: np.ndarray, mx_class: int, mi_type: int, order: str = "<") -> bytes:
    """One miMATRIX element: array flags, dimensions, name and real part (column-major), its values stored
    as ``mi_type`` (MATLAB stores whole doubles that fit in a byte as uint8); ``order`` "<" or ">"."""
    flags = _mat_element(_MI_UINT32, struct.pack(order + "II", mx_class, 0), order)
    dims = _mat_element(_MI_INT32, np.array(array.shape, order + "i4").tobytes(), order)
    real = array.ravel(order="F").astype(order + _MI_DTYPE[mi_type]).tobytes()
    body = flags + dims + _mat_element(_MI_INT8, name.encode(), order) + _mat_element(mi_type, real, order)
    return _mat_element(_MI_MATRIX, body, order)


def write_mat(path: Path, matrices: list[bytes], order: str = "<", compressed: bool = False) -> None:
    """A MATLAB v5 file: the 128-byte header (version 0x0100, endian indicator IM or MI), then the
    :func:`mat_matrix` elements, each in an miCOMPRESSED element (zlib, not padded) when ``compressed``."""
    header = b"MATLAB 5.0 MAT-file, written by fedbat_mpi.testing".ljust(116) + b"\0" * 8
    header += struct.pack(order + "H", 0x0100) + (b"IM" if order == "<" else b"MI")
    if compressed:
        matrices = [
            struct.pack(order + "II", _MI_COMPRESSED, len(z)) + z for z in map(zlib.compress, matrices)
        ]
    path.write_bytes(header + b"".join(matrices))


def write_svhn(
    root: Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    order: str = "<",
    compressed: bool = False,
    y_as_uint8: bool = False,
) -> dict[str, np.ndarray]:
    """``root/svhn/{train,test}_32x32.mat``: a char variable ``note`` (which readers skip), X (uint8
    32×32×3×N) and y (double N×1 in 1..10, 10 for the digit 0; stored as uint8 with ``y_as_uint8``)."""
    folder = root / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _random_arrays(seed, {"train": n_train, "test": n_test}, (3, 32, 32), 10)
    note = np.array([[ord(c) for c in "hi"]])
    for split in ("train", "test"):
        x = arrays[f"{split}_x"] = arrays[f"{split}_x"].transpose(2, 3, 1, 0)  # X[h, w, c, n]
        y = arrays[f"{split}_y"] = arrays[f"{split}_y"][:, None].astype(np.float64) + 1
        matrices = [
            mat_matrix("note", note, MX_CHAR, MI_UINT16, order),
            mat_matrix("X", x, MX_UINT8, MI_UINT8, order),
            mat_matrix("y", y, MX_DOUBLE, MI_UINT8 if y_as_uint8 else MI_DOUBLE, order),
        ]
        write_mat(folder / f"{split}_32x32.mat", matrices, order, compressed)
    return arrays


# ---- CIFAR-10/100: binary batches and python pickles ----


def write_cifar_bin(path: Path, images: np.ndarray, labels: list[np.ndarray]) -> None:
    """A binary batch: per image its label bytes (CIFAR-100: coarse, then fine), then its 3,072 pixels."""
    columns = [lab.astype(np.uint8)[:, None] for lab in labels] + [images.reshape(len(images), -1)]
    path.write_bytes(np.hstack(columns).tobytes())


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings, as cPickle did for the official CIFAR batches."""

    dispatch: ClassVar[dict[type, Callable[..., None]]] = pickle._Pickler.dispatch.copy()
    write: Callable[[bytes], None]  # pickle._Pickler's, missing from its stubs
    memoize: Callable[[object], None]

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        size = bytes([n]) if n < 256 else struct.pack("<I", n)
        self.write((pickle.SHORT_BINSTRING if n < 256 else pickle.BINSTRING) + size + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin-1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def write_pickle(path: Path, obj: object, py2: bool = False) -> None:
    """``obj`` pickled (protocol 4), or with ``py2`` as Python 2 wrote it (protocol 2, byte strings)."""
    with path.open("wb") as f:
        if py2:
            _Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=4)


def write_cifar10(
    root: Path, n_train: int, n_test: int, seed: int = 0, form: CifarForm = "bin"
) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`` (``form`` "bin"), or the pickles
    ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}`` ("python"; "python2" as cPickle wrote them):
    the training images split over five batches, images 3×32×32, labels 0..9."""
    arrays = _random_arrays(seed, {"train": n_train, "test": n_test}, (3, 32, 32), 10)
    folder = root / ("cifar-10-batches-bin" if form == "bin" else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    batches = zip(np.array_split(arrays["train_x"], 5), np.array_split(arrays["train_y"], 5))
    named = [(f"data_batch_{i}", x, y) for i, (x, y) in enumerate(batches, start=1)]
    for name, x, y in [*named, ("test_batch", arrays["test_x"], arrays["test_y"])]:
        if form == "bin":
            write_cifar_bin(folder / f"{name}.bin", x, [y])
        else:
            batch = {b"batch_label": name.encode(), b"labels": y.tolist(), b"data": x.reshape(len(x), -1),
                     b"filenames": [b"%d.png" % i for i in range(len(x))]}  # fmt: skip
            write_pickle(folder / name, batch, py2=form == "python2")
    return arrays


def write_cifar100(
    root: Path, n_train: int, n_test: int, seed: int = 0, form: CifarForm = "bin"
) -> dict[str, np.ndarray]:
    """``root/cifar-100-binary/{train,test}.bin`` (``form`` "bin"), or the pickles
    ``root/cifar-100-python/{train,test}``: images 3×32×32, fine labels 0..99 (the ``_y`` arrays) and
    coarse labels fine // 5."""
    arrays = _random_arrays(seed, {"train": n_train, "test": n_test}, (3, 32, 32), 100)
    folder = root / ("cifar-100-binary" if form == "bin" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        x, fine = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if form == "bin":
            write_cifar_bin(folder / f"{split}.bin", x, [fine // 5, fine])
        else:
            batch = {b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(),
                     b"data": x.reshape(len(x), -1)}  # fmt: skip
            write_pickle(folder / split, batch, py2=form == "python2")
    return arrays
