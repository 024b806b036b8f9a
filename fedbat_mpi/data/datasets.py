"""The data sets of docs/FEDBAT.md §2.1 in memory, plus their normalisation and CIFAR augmentation."""

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedbat_mpi.errors import UsageError

from .formats import read_cifar_bin, read_cifar_pickle, read_idx, read_mat_v5

IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "embedded": (1, 28, 28),
    "fmnist": (1, 28, 28),
    "svhn": (3, 32, 32),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
}
"""Each data set's images, C x H x W."""
DATASET_NAMES = tuple(IMAGE_SHAPES)
EMBEDDED_DIR = Path(__file__).parent / "embedded"
EMBEDDED_TRAIN = 8000  # the first 8,000 of the shipped 10,000 Fashion-MNIST test images; the rest test
_CROP_PAD = 4

Stats = tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]
_FMNIST_STATS: Stats = ((0.2860,), (0.3530,), (0.2868,), (0.3524,))
_SVHN_STATS: Stats = ((0.4496,) * 3, (0.1995,) * 3, (0.4560,) * 3, (0.2244,) * 3)
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images (uint8, N×C×H×W) and labels (int64) of both splits, with how to preprocess them."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    train_mean: tuple[float, ...]
    train_std: tuple[float, ...]
    test_mean: tuple[float, ...]
    test_std: tuple[float, ...]
    augment: bool  # random crop (pad 4) + horizontal flip during training
    default_model: str


def data_sha256(dataset: Dataset) -> str:
    """The SHA-256 of a data set as loaded: its name, then each split's images and labels (shape, dtype
    and little-endian bytes); another folder of the same files gives the same digest."""
    digest = hashlib.sha256(dataset.name.encode())
    for array in (dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y):
        values = array.numpy()
        values = values.astype(values.dtype.newbyteorder("<"), copy=False)
        digest.update(json.dumps([list(values.shape), values.dtype.str]).encode())
        digest.update(np.ascontiguousarray(values).data)
    return digest.hexdigest()


def load_dataset(name: str, data_dir: str | None) -> Dataset:
    """Load data set `name` (one of DATASET_NAMES); all but 'embedded' are read from `data_dir`."""
    loaders = {"fmnist": _fmnist, "svhn": _svhn, "cifar10": _cifar10, "cifar100": _cifar100}
    if name == "embedded":
        return _embedded()
    if name not in loaders:
        raise UsageError(f"--dataset: expected one of {', '.join(DATASET_NAMES)}, got {name!r}")
    if data_dir is None:
        raise UsageError(f"--data-dir: required for --dataset {name} (only 'embedded' ships with the package)")
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f"--data-dir: expected a directory, got {data_dir}")
    return loaders[name](root)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images N×C×H×W to float32 (x/255 − mean)/std per channel, on x's device."""
    mean_t, std_t = _channel_stats(tuple(mean), tuple(std), x.device)
    return (x.to(torch.float32) / 255 - mean_t) / std_t


@functools.lru_cache(maxsize=64)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-channel mean and std as 1×C×1×1 tensors on ``device``, made once (a copy to a GPU at every
    batch would wait for the GPU's queue to drain each time)."""
    return tuple(torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in (mean, std))


Crops = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # per image: row offset, column offset, flip


def draw_crops(n: int, generator: torch.Generator, device: torch.device) -> Crops:
    """The augmentation of ``n`` images (docs/FEDBAT.md §2.1): a random H×W crop of the zero-padded (by 4)
    image, then a horizontal flip with probability 0.5. Drawn from ``generator`` on its own device (so
    results do not depend on the images' device), in the order row offsets, column offsets, flips, and
    sent to ``device`` without waiting for a GPU's queue."""
    dev = generator.device
    dy = torch.randint(0, 2 * _CROP_PAD + 1, (n,), generator=generator, device=dev).to(device, non_blocking=True)
    dx = torch.randint(0, 2 * _CROP_PAD + 1, (n,), generator=generator, device=dev).to(device, non_blocking=True)
    flip = (torch.rand(n, generator=generator, device=dev) < 0.5).to(device, non_blocking=True)
    return dy, dx, flip


def crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Images N×C×H×W cropped and flipped as ``draw_crops`` drew (one gather for the whole batch); apply
    before ``normalize`` to pad with black pixels."""
    n, c, h, w = x.shape
    padded = x.new_zeros((n, h + 2 * _CROP_PAD, w + 2 * _CROP_PAD, c))
    padded[:, _CROP_PAD : _CROP_PAD + h, _CROP_PAD : _CROP_PAD + w] = x.permute(0, 2, 3, 1)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    rows = torch.arange(h, device=x.device) + dy[:, None]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _embedded() -> Dataset:
    images = read_idx(EMBEDDED_DIR / "t10k-images-idx3-ubyte.gz", 3)[:, None]
    labels = read_idx(EMBEDDED_DIR / "t10k-labels-idx1-ubyte.gz", 1).astype(np.int64)
    _check(images, labels, 10, IMAGE_SHAPES["embedded"], str(EMBEDDED_DIR))
    train = images[:EMBEDDED_TRAIN], labels[:EMBEDDED_TRAIN]
    test = images[EMBEDDED_TRAIN:], labels[EMBEDDED_TRAIN:]
    return _dataset("embedded", train, test, 10, _FMNIST_STATS, False, "cnn4-mnist")


def _fmnist(root: Path) -> Dataset:
    folder = root / "fashion-mnist"

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        image_path = _existing_idx(folder / f"{prefix}-images-idx3-ubyte", root)
        label_path = _existing_idx(folder / f"{prefix}-labels-idx1-ubyte", root)
        images, labels = read_idx(image_path, 3)[:, None], read_idx(label_path, 1).astype(np.int64)
        _check(images, labels, 10, IMAGE_SHAPES["fmnist"], f"{image_path} and {label_path}")
        return images, labels

    return _dataset("fmnist", split("train"), split("t10k"), 10, _FMNIST_STATS, False, "cnn4-mnist")


def _svhn(root: Path) -> Dataset:
    def split(stem: str) -> tuple[np.ndarray, np.ndarray]:
        path = _existing(root / "svhn" / f"{stem}_32x32.mat", "svhn", root)
        arrays = read_mat_v5(path)
        if "X" not in arrays or "y" not in arrays:
            raise UsageError(f"{path}: expected MATLAB variables X and y")
        x, y = arrays["X"], arrays["y"].reshape(-1)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
            raise UsageError(f"{path}: expected X as uint8 32×32×3×N, got {x.dtype} {x.shape}")
        if np.any((y < 1) | (y > 10) | (y != np.round(y))):
            raise UsageError(f"{path}: expected labels y in 1..10 (10 meaning digit 0)")
        images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
        labels = y.astype(np.int64) % 10
        _check(images, labels, 10, IMAGE_SHAPES["svhn"], str(path))
        return images, labels

    return _dataset("svhn", split("train"), split("test"), 10, _SVHN_STATS, False, "cnn4")


def _cifar10(root: Path) -> Dataset:
    folders = ("cifar-10-batches-bin", "cifar-10-batches-py")
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    train = _cifar_split(root, "cifar10", folders, batches, 1, b"labels", 10)
    test = _cifar_split(root, "cifar10", folders, ["test_batch"], 1, b"labels", 10)
    return _dataset("cifar10", train, test, 10, _IMAGENET * 2, True, "resnet10")


def _cifar100(root: Path) -> Dataset:
    folders = ("cifar-100-binary", "cifar-100-python")
    train = _cifar_split(root, "cifar100", folders, ["train"], 2, b"fine_labels", 100)
    test = _cifar_split(root, "cifar100", folders, ["test"], 2, b"fine_labels", 100)
    return _dataset("cifar100", train, test, 100, _CIFAR100 * 2, True, "resnet10")


def _cifar_split(
    root: Path,
    name: str,
    folders: tuple[str, str],
    stems: Sequence[str],
    label_bytes: int,
    label_key: bytes,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Batches `stems` from the binary folder (stem.bin) if present, else the python folder (stem)."""
    bin_dir, py_dir = root / folders[0], root / folders[1]
    if bin_dir.is_dir():
        paths = [_existing(bin_dir / f"{stem}.bin", name, root) for stem in stems]
        parts = [read_cifar_bin(path, label_bytes) for path in paths]
    elif py_dir.is_dir():
        paths = [_existing(py_dir / stem, name, root) for stem in stems]
        parts = [read_cifar_pickle(path, label_key) for path in paths]
    else:
        raise UsageError(f"{name}: neither {bin_dir}/ nor {py_dir}/ found under --data-dir {root}")
    for path, (images, labels) in zip(paths, parts):
        _check(images, labels, num_classes, IMAGE_SHAPES[name], str(path))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _existing(path: Path, name: str, root: Path) -> Path:
    if not path.is_file():
        raise UsageError(f"{name}: {path} not found under --data-dir {root}")
    return path


def _existing_idx(path: Path, root: Path) -> Path:
    """`path` or `path`.gz, whichever exists."""
    gz = path.with_name(path.name + ".gz")
    if path.is_file():
        return path
    if gz.is_file():
        return gz
    raise UsageError(f"fashion-mnist: {path}[.gz] not found under --data-dir {root}")


def _check(images: np.ndarray, labels: np.ndarray, num_classes: int, shape: tuple[int, ...], source: str) -> None:
    """Images N×shape matching N labels in 0..num_classes-1, N > 0, else a UsageError naming `source`."""
    if images.shape[1:] != shape or labels.shape != images.shape[:1]:
        raise UsageError(f"{source}: expected N images of {shape} and N labels, got {images.shape} and {labels.shape}")
    if not labels.size:
        raise UsageError(f"{source}: expected at least one image, got none")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UsageError(f"{source}: expected labels in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")


def _dataset(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    stats: Stats,
    augment: bool,
    default_model: str,
) -> Dataset:
    return Dataset(
        name=name,
        train_x=torch.from_numpy(np.ascontiguousarray(train[0])),
        train_y=torch.from_numpy(np.ascontiguousarray(train[1])),
        test_x=torch.from_numpy(np.ascontiguousarray(test[0])),
        test_y=torch.from_numpy(np.ascontiguousarray(test[1])),
        num_classes=num_classes,
        train_mean=stats[0],
        train_std=stats[1],
        test_mean=stats[2],
        test_std=stats[3],
        augment=augment,
        default_model=default_model,
    )
