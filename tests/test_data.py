"""Data set loaders on files in each official format (written by fedbat_mpi.testing.formats), plus
normalisation and augmentation."""

import gzip
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fedbat_mpi.data import crop, draw_crops, load_dataset, normalize
from fedbat_mpi.errors import UsageError
from fedbat_mpi.testing.formats import (
    MI_DOUBLE,
    MI_UINT8,
    MX_DOUBLE,
    MX_UINT8,
    CifarForm,
    mat_matrix,
    write_cifar10,
    write_cifar100,
    write_cifar_bin,
    write_fmnist,
    write_idx,
    write_mat,
    write_pickle,
    write_svhn,
)

DEBIAN_DATASETS = Path("/usr/share/datasets")


# ---- embedded and Fashion-MNIST ----


def test_embedded() -> None:
    data = load_dataset("embedded", None)
    assert data.train_x.shape == (8000, 1, 28, 28) and data.test_x.shape == (2000, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.train_y.shape == (8000,) and data.test_y.shape == (2000,)
    assert data.num_classes == 10 and data.default_model == "cnn4-mnist" and not data.augment
    assert 0 <= int(data.train_y.min()) and int(data.train_y.max()) == 9
    assert set(data.test_y.tolist()) == set(range(10))
    assert data.train_mean == (0.2860,) and data.test_std == (0.3524,)


@pytest.mark.parametrize("gz", [True, False])
def test_fmnist_files(tmp_path: Path, gz: bool) -> None:
    arrays = write_fmnist(tmp_path, 7, 3, gz=gz)
    data = load_dataset("fmnist", str(tmp_path))
    np.testing.assert_array_equal(data.train_x[:, 0].numpy(), arrays["train_x"])
    np.testing.assert_array_equal(data.test_y.numpy(), arrays["test_y"])
    assert data.test_x.shape == (3, 1, 28, 28)


@pytest.mark.skipif(not (DEBIAN_DATASETS / "fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_fmnist_debian_package() -> None:
    data = load_dataset("fmnist", str(DEBIAN_DATASETS))
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
    folder = DEBIAN_DATASETS / "fashion-mnist"
    for split, images, labels in (("train", data.train_x, data.train_y), ("t10k", data.test_x, data.test_y)):
        np.testing.assert_array_equal(labels.numpy(), _idx_body(folder / f"{split}-labels-idx1-ubyte"))
        np.testing.assert_array_equal(images.reshape(-1).numpy(), _idx_body(folder / f"{split}-images-idx3-ubyte"))
    embedded = load_dataset("embedded", None)
    np.testing.assert_array_equal(data.test_x[:8000].numpy(), embedded.train_x.numpy())
    np.testing.assert_array_equal(data.test_y[8000:].numpy(), embedded.test_y.numpy())


def _idx_body(path: Path) -> np.ndarray:
    """The bytes after an IDX header (magic, then one big-endian uint32 per dimension), read directly."""
    raw = gzip.decompress(path.with_name(path.name + ".gz").read_bytes()) if not path.exists() else path.read_bytes()
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * raw[3])


def test_embedded_data_is_the_shipped_fmnist_test_set_as_written() -> None:
    data = load_dataset("embedded", None)
    folder = Path(__file__).resolve().parents[1] / "fedbat_mpi" / "data" / "embedded"
    labels = _idx_body(folder / "t10k-labels-idx1-ubyte")
    images = _idx_body(folder / "t10k-images-idx3-ubyte").reshape(-1, 1, 28, 28)
    np.testing.assert_array_equal(data.train_y.numpy(), labels[:8000])
    np.testing.assert_array_equal(data.test_y.numpy(), labels[8000:])
    np.testing.assert_array_equal(data.train_x.numpy(), images[:8000])
    np.testing.assert_array_equal(data.test_x.numpy(), images[8000:])
    # Fashion-MNIST's test set: 1,000 images of each class, so ten classes in the held-out part too.
    assert np.bincount(labels).tolist() == [1000] * 10


def test_fmnist_missing_file(tmp_path: Path) -> None:
    write_fmnist(tmp_path, 2, 2, gz=True)
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    missing = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte"
    expected = f"fashion-mnist: {missing}[.gz] not found under --data-dir {tmp_path}"
    with pytest.raises(UsageError) as info:
        load_dataset("fmnist", str(tmp_path))
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-5], "expected 4720 bytes"),  # 6 images, last 5 pixel bytes cut off
        (lambda b: b + b"\0", "expected 4720 bytes"),  # a byte too many
        (lambda b: b"\0\0\x08\x01" + b[4:], "magic 00000803"),  # a label file's magic
        (lambda b: b"", "an empty file"),
        (lambda b: gzip.compress(b)[:-20], "complete gzip"),
    ],
)
def test_idx_malformed(tmp_path: Path, damage: Callable[[bytes], bytes], message: str) -> None:
    write_fmnist(tmp_path, 6, 2, gz=False)
    path = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UsageError, match=message) as info:
        load_dataset("fmnist", str(tmp_path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_fmnist_label_count_mismatch(tmp_path: Path) -> None:
    write_fmnist(tmp_path, 5, 2, gz=False)
    write_idx(tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte", np.zeros(4, np.uint8), gz=False)
    with pytest.raises(UsageError, match="expected N images"):
        load_dataset("fmnist", str(tmp_path))


@pytest.mark.parametrize("empty", ["train", "t10k"])
def test_an_empty_split_is_refused_naming_its_files(tmp_path: Path, empty: str) -> None:
    write_fmnist(tmp_path, *{"train": (0, 4), "t10k": (4, 0)}[empty], gz=False)
    prefix = tmp_path / "fashion-mnist" / empty
    expected = f"{prefix}-images-idx3-ubyte and {prefix}-labels-idx1-ubyte: expected at least one image, got none"
    with pytest.raises(UsageError) as info:
        load_dataset("fmnist", str(tmp_path))
    assert str(info.value).startswith(expected)


# docs/FEDBAT.md §2.1, written out: (train mean, train std, test mean, test std), a value per channel.
PAPER_STATISTICS = {
    "embedded": ((0.2860,), (0.3530,), (0.2868,), (0.3524,)),  # Fashion-MNIST's
    "fmnist": ((0.2860,), (0.3530,), (0.2868,), (0.3524,)),
    "svhn": ((0.4496,) * 3, (0.1995,) * 3, (0.4560,) * 3, (0.2244,) * 3),
    "cifar10": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)) * 2,
}
Writer = Callable[[Path, int, int], dict[str, np.ndarray]]  # root, train and test sizes: the arrays written
WRITERS: dict[str, Writer] = {"fmnist": write_fmnist, "svhn": write_svhn, "cifar10": write_cifar10, "cifar100": write_cifar100}


@pytest.mark.parametrize("name", list(PAPER_STATISTICS))
def test_each_data_set_normalises_with_the_papers_statistics(tmp_path: Path, name: str) -> None:
    if name in WRITERS:
        WRITERS[name](tmp_path, 10, 2)
    data = load_dataset(name, None if name == "embedded" else str(tmp_path))
    assert (data.train_mean, data.train_std, data.test_mean, data.test_std) == PAPER_STATISTICS[name]


# ---- SVHN (MATLAB v5) ----


@pytest.mark.parametrize(
    ("order", "compressed", "y_as_uint8"), [("<", False, True), ("<", True, False), (">", True, True)]
)
def test_svhn(tmp_path: Path, order: str, compressed: bool, y_as_uint8: bool) -> None:
    arrays = write_svhn(tmp_path, 5, 3, order=order, compressed=compressed, y_as_uint8=y_as_uint8)
    data = load_dataset("svhn", str(tmp_path))
    assert data.train_x.shape == (5, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(data.train_x.numpy(), arrays["train_x"].transpose(3, 2, 0, 1))  # X[h, w, c, n]
    np.testing.assert_array_equal(data.test_y.numpy(), arrays["test_y"][:, 0].astype(np.int64) % 10)
    assert data.train_mean == (0.4496,) * 3 and data.default_model == "cnn4"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-100], "truncated"),
        (lambda b: b[:124] + b"\x00\x02IM" + b[128:], "v7.3"),
        (lambda b: b"not a mat file", "MATLAB v5"),
    ],
)
def test_svhn_malformed(tmp_path: Path, damage: Callable[[bytes], bytes], message: str) -> None:
    write_svhn(tmp_path, 2, 2, y_as_uint8=True)
    path = tmp_path / "svhn" / "train_32x32.mat"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UsageError, match=message) as info:
        load_dataset("svhn", str(tmp_path))
    assert str(path) in str(info.value)


def test_svhn_bad_variables(tmp_path: Path) -> None:
    (tmp_path / "svhn").mkdir()
    x = mat_matrix("X", np.zeros((32, 32, 3, 2), np.uint8), MX_UINT8, MI_UINT8)
    write_mat(tmp_path / "svhn" / "train_32x32.mat", [x])
    with pytest.raises(UsageError, match="expected MATLAB variables X and y"):
        load_dataset("svhn", str(tmp_path))
    for labels in ([0, 1], [10, 11], [1, 2.5]):  # below, above the range, not whole
        y = mat_matrix("y", np.array(labels, np.float64).reshape(2, 1), MX_DOUBLE, MI_DOUBLE)
        write_mat(tmp_path / "svhn" / "train_32x32.mat", [x, y])
        with pytest.raises(UsageError, match="labels y in 1..10"):
            load_dataset("svhn", str(tmp_path))
    (tmp_path / "svhn" / "train_32x32.mat").unlink()
    with pytest.raises(UsageError, match="svhn: .*train_32x32.mat not found under --data-dir"):
        load_dataset("svhn", str(tmp_path))


# ---- CIFAR ----


def test_cifar10_binary(tmp_path: Path) -> None:
    arrays = write_cifar10(tmp_path, 20, 4)  # five training batches of 4
    data = load_dataset("cifar10", str(tmp_path))
    np.testing.assert_array_equal(data.train_x.numpy(), arrays["train_x"])
    np.testing.assert_array_equal(data.train_y.numpy(), arrays["train_y"])
    np.testing.assert_array_equal(data.test_x.numpy(), arrays["test_x"])
    assert data.augment and data.default_model == "resnet10" and data.train_mean == (0.485, 0.456, 0.406)

    batch = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-1])
    with pytest.raises(UsageError, match="data_batch_3.bin: expected CIFAR binary records of 3073 bytes"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar100_binary_uses_fine_labels(tmp_path: Path) -> None:
    arrays = write_cifar100(tmp_path, 6, 2)  # coarse labels first in each record, then fine ones
    data = load_dataset("cifar100", str(tmp_path))
    assert not np.array_equal(arrays["train_y"], arrays["train_y"] // 5)
    np.testing.assert_array_equal(data.train_y.numpy(), arrays["train_y"])
    np.testing.assert_array_equal(data.test_x.numpy(), arrays["test_x"])
    assert data.num_classes == 100 and data.train_std == (0.2673, 0.2564, 0.2762)


@pytest.mark.parametrize("form", ["python", "python2"])
def test_cifar_python(tmp_path: Path, form: CifarForm) -> None:
    arrays10 = write_cifar10(tmp_path, 15, 3, form=form)
    arrays100 = write_cifar100(tmp_path, 4, 4, form=form)
    data10 = load_dataset("cifar10", str(tmp_path))
    np.testing.assert_array_equal(data10.train_x.numpy(), arrays10["train_x"])
    np.testing.assert_array_equal(data10.test_y.numpy(), arrays10["test_y"])
    data100 = load_dataset("cifar100", str(tmp_path))
    np.testing.assert_array_equal(data100.train_y.numpy(), arrays100["train_y"])
    np.testing.assert_array_equal(data100.test_x.numpy(), arrays100["test_x"])


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_cifar_python_refuses_other_globals(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    marker = tmp_path / "exploited"
    write_pickle(folder / "train", {b"data": _Exploit(marker), b"fine_labels": []})
    with pytest.raises(UsageError, match=r"train: expected a CIFAR python batch .*refusing global (posix|os)\.system"):
        load_dataset("cifar100", str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x80\x04garbage", "expected a CIFAR python batch"),
        (pickle.dumps([1, 2, 3]), "expected a CIFAR python batch"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"fine_labels": [0, 1]}), "uint8 data"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0]}), "N integer labels"),
    ],
)
def test_cifar_python_malformed(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(content)
    with pytest.raises(UsageError, match=message):
        load_dataset("cifar100", str(tmp_path))


def test_cifar_label_out_of_range(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    images = np.zeros((2, 3, 32, 32), np.uint8)
    write_cifar_bin(folder / "train.bin", images, [np.array([0, 0]), np.array([3, 100])])
    with pytest.raises(UsageError, match="train.bin: expected labels in 0..99, got 3..100"):
        load_dataset("cifar100", str(tmp_path))


def test_cifar_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cifar10: neither .*cifar-10-batches-bin/ nor .*cifar-10-batches-py/ found"):
        load_dataset("cifar10", str(tmp_path))


def test_bad_names_and_dirs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--dataset: expected one of embedded, fmnist"):
        load_dataset("mnist", str(tmp_path))
    with pytest.raises(UsageError, match="--data-dir: required for --dataset svhn"):
        load_dataset("svhn", None)
    with pytest.raises(UsageError, match="--data-dir: expected a directory"):
        load_dataset("svhn", str(tmp_path / "nowhere"))


# ---- preprocessing ----


def test_normalize() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    out = normalize(x, (0.5, 0.2, 0.0), (0.5, 0.1, 2.0))
    assert out.dtype == torch.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.flatten().numpy(), [-1.0, 0.0, 0.5], atol=1e-6)


def reference_augment(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    padded = torch.nn.functional.pad(x.float(), (4, 4, 4, 4))
    crops = [p[:, a : a + 32, b : b + 32] for p, a, b in zip(padded, dy.tolist(), dx.tolist())]
    return torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flip.tolist())]).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augmentation(dtype: torch.dtype) -> None:
    x = torch.randint(1, 256, (64, 3, 32, 32)).to(dtype)
    cpu = torch.device("cpu")
    out = crop(x, *draw_crops(64, torch.Generator().manual_seed(5), cpu))
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, crop(x, *draw_crops(64, torch.Generator().manual_seed(5), cpu)))
    assert not torch.equal(out, crop(x, *draw_crops(64, torch.Generator().manual_seed(6), cpu)))
    draws = torch.Generator().manual_seed(5)
    dy, dx = torch.randint(0, 9, (64,), generator=draws), torch.randint(0, 9, (64,), generator=draws)
    flip = torch.rand(64, generator=draws) < 0.5
    torch.testing.assert_close(out, reference_augment(x, dy, dx, flip))
    assert 0 < int(flip.sum()) < 64 and (dy != 4).any()
