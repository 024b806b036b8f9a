"""Fetch the paper's data sets from their official sources into the layout ``load_dataset`` reads.

Every file is checked against the MD5 its source publishes before it is used; archives are unpacked
with tarfile's ``data`` filter (no absolute paths, links out of the folder or device files).
Fashion-MNIST's MD5s are those of its repository's README; SVHN's and CIFAR's those of their pages.
"""

import hashlib
import os
import platform
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fedbat_mpi.errors import UsageError


@dataclass(frozen=True)
class Source:
    """One file to fetch: where from, its MD5, the folder under ``--data-dir``, and whether to unpack it."""

    url: str
    md5: str
    folder: str
    unpack: bool = False

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_FMNIST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"
_CIFAR = "https://www.cs.toronto.edu/~kriz/"

SOURCES: dict[str, tuple[Source, ...]] = {
    "fmnist": (
        Source(_FMNIST + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "fashion-mnist"),
        Source(_FMNIST + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "fashion-mnist"),
        Source(_FMNIST + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "fashion-mnist"),
        Source(_FMNIST + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "fashion-mnist"),
    ),
    "svhn": (
        Source(_SVHN + "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", "svhn"),
        Source(_SVHN + "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", "svhn"),
    ),
    "cifar10": (Source(_CIFAR + "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", ".", unpack=True),),
    "cifar100": (Source(_CIFAR + "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", ".", unpack=True),),
}


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(source: Source, data_dir: Path) -> Path:
    """Download ``source`` (unless a verified copy is there), verify it, and unpack it if an archive."""
    folder = data_dir / source.folder
    target = folder / source.file_name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        verified = target.exists() and md5_of(target) == source.md5
    except OSError as error:
        raise UsageError(f"--data-dir: cannot use {folder}: {error.strerror}") from None
    if not verified:
        partial = target.with_name(target.name + ".part")
        try:
            urllib.request.urlretrieve(source.url, partial)
        except OSError as error:
            raise UsageError(f"download: cannot fetch {source.url}: {error}") from None
        found = md5_of(partial)
        if found != source.md5:
            partial.unlink()
            raise UsageError(f"download: {source.url} has MD5 {found}, expected {source.md5}; nothing was kept")
        os.replace(partial, target)
    if source.unpack:
        try:
            with tarfile.open(target) as archive:
                archive.extractall(folder, filter="data")
        except tarfile.TarError as error:
            raise UsageError(f"download: cannot unpack {target}: {error}") from None
    return target


def download(name: str, data_dir: str, sources: dict[str, tuple[Source, ...]] = SOURCES) -> list[Path]:
    """Fetch every file of data set ``name`` into ``data_dir``."""
    if name not in sources:
        raise UsageError(f"download: expected one of {', '.join(sources)}, got {name!r}")
    if any(source.unpack for source in sources[name]) and not hasattr(tarfile, "data_filter"):
        raise UsageError(f"download: {name}'s archive is unpacked with tarfile's 'data' filter, which this "
                         f"Python {platform.python_version()} lacks (3.10.12, 3.11.4, 3.12 or later have it)")  # fmt: skip
    return [fetch(source, Path(data_dir)) for source in sources[name]]
