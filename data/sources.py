"""Datasets as uint8 tensors: (images (N, C, H, W) uint8, labels (N,) int64) per split.

A file that is there but broken (a truncated or foreign idx file, an image that does not decode or has
another size) is a DataError naming the file and what is wrong with it.

torchvision is imported when a dataset loads, not with this module: its import pulls in torch._dynamo (seconds),
which a run stopped by a config error, ``--help`` or an analysis tool never needs.
"""
import math
import struct
from pathlib import Path

import torch

from utils.errors import ConfigError, UserError
from utils.progress import progress_bar


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset is not where the config says; the message says where we looked and what to do."""


# Where each torchvision dataset keeps its files under data.root.
LAYOUT = {"MNIST": "MNIST/raw/", "FashionMNIST": "FashionMNIST/raw/", "CIFAR10": "cifar-10-batches-py/"}


class DataError(UserError, ValueError):
    """A dataset file that is present but unusable; the message names the file and the fault."""


def check_idx_file(path: Path, ndim: int) -> None:
    """An idx file of unsigned bytes (MNIST's format): magic 0x0000 08 ``ndim``, ``ndim`` big-endian uint32
    sizes, then exactly prod(sizes) bytes. A missing file is left to the loader's not-found message."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    expected_magic = bytes([0, 0, 0x08, ndim])
    if header[:4] != expected_magic:
        raise DataError(f"{path} is not an idx file of {ndim}-d unsigned bytes: magic number {header[:4].hex()}, "
                        f"expected {expected_magic.hex()}; replace it with the original file")
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated inside its header ({len(header)} bytes); replace it")
    sizes = struct.unpack(f">{ndim}I", header[4:])
    expected, actual = len(header) + math.prod(sizes), path.stat().st_size
    if actual != expected:
        fault = "is truncated" if actual < expected else "has extra bytes"
        shape = " x ".join(map(str, sizes))
        raise DataError(f"{path} {fault}: {actual} bytes, its header promises {expected} ({shape} values); "
                        f"replace it with the original file")


def _torchvision(dataset: str, name: str, root: str, train: bool, download: bool):
    """torchvision.datasets.<dataset> read from ``root``, with a not-found message naming where it looked."""
    import torchvision
    cls = getattr(torchvision.datasets, dataset)
    if issubclass(cls, torchvision.datasets.MNIST):  # FashionMNIST too: same files, another folder
        raw = Path(root) / cls.__name__ / "raw"
        prefix = "train" if train else "t10k"
        check_idx_file(raw / f"{prefix}-images-idx3-ubyte", 3)
        check_idx_file(raw / f"{prefix}-labels-idx1-ubyte", 1)
    try:
        return cls(root=root, train=train, download=download)
    except RuntimeError as e:
        layout = LAYOUT[cls.__name__]
        if download:
            raise DatasetNotFoundError(f"{name} download into {Path(root).resolve()} failed: {e}") from None
        raise DatasetNotFoundError(
            f"{name} not found: no {layout} under data.root={root!r} ({Path(root).resolve() / layout}); "
            f"set data.root=<folder holding {layout}>, or export DATA_ROOT=<that folder> (the default root; "
            f"without it ../shared/data), or data.download=true (needs network)"
            + (" (an image-folder copy of CIFAR-10 with train/ and test/ is read by data=cifar10_folder)"
               if cls.__name__ == "CIFAR10" else "")) from None


def load_mnist(root: str, train: bool, download: bool = False):
    ds = _torchvision("MNIST", "MNIST", root, train, download)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


def load_fashion_mnist(root: str, train: bool, download: bool = False):
    ds = _torchvision("FashionMNIST", "FashionMNIST", root, train, download)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


def load_cifar10(root: str, train: bool, download: bool = False):
    ds = _torchvision("CIFAR10", "CIFAR-10", root, train, download)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return images, torch.tensor(ds.targets, dtype=torch.long)


def load_image_folder(root: str, train: bool, download: bool = False, progress: bool = False):
    """``root/{train,test}/<class>/<image>``, classes in sorted order (CIFAR-10's label order); ``progress``: a bar
    while the images decode (CIFAR-10's 60,000 JPEGs take seconds)."""
    if download:
        raise ConfigError("data.download=True is invalid for an image folder: allowed false (the folder must exist)")
    split = Path(root) / ("train" if train else "test")
    if not split.is_dir():
        raise DatasetNotFoundError(
            f"image folder not found: no {split.name}/ under data.root={root!r} ({split.resolve()}); set "
            f"data.root=<folder holding train/<class>/*.jpg and test/<class>/*.jpg>, or export DATA_ROOT=<folder> "
            f"(data=cifar10_folder reads $DATA_ROOT/cifar10-jpeg75; without it ../shared/data/cifar10-jpeg75)")
    from torchvision.datasets import ImageFolder
    check_same_classes(Path(root))
    samples = ImageFolder(str(split)).samples  # [(path, class_index)], sorted
    images = [_decode(path) for path, _ in progress_bar(samples, desc=f"decoding {split.name}/", enabled=progress)]
    for image, (path, _) in zip(images, samples):
        if image.shape != images[0].shape:
            raise DataError(f"{path} is {image.shape[2]}x{image.shape[1]} pixels, {samples[0][0]} and the images "
                            f"before it {images[0].shape[2]}x{images[0].shape[1]}; every image needs one size")
    return torch.stack(images), torch.tensor([label for _, label in samples], dtype=torch.long)


def check_same_classes(root: Path) -> None:
    """train/ and test/ hold the same class folders: labels are indices into the sorted names, so a class
    missing from one split would shift every label after it."""
    if not (root / "test").is_dir():
        return  # reported as not found when the test split loads
    from torchvision.datasets.folder import find_classes
    train, test = (set(find_classes(str(root / split))[0]) for split in ("train", "test"))
    if train != test:
        only = [f"only in {name}/: {', '.join(sorted(names))}" for name, names in
                (("train", train - test), ("test", test - train)) if names]
        raise DataError(f"the class folders of {root}/train and {root}/test differ ({'; '.join(only)}); give "
                        f"both splits the same class folders")


def _decode(path: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file
    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise DataError(f"{path} does not decode as an image ({str(e).splitlines()[0][:100]}); replace or remove "
                        f"it") from None


SOURCES = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "image_folder": load_image_folder,
}
