"""Datasets as uint8 tensors: (images (N, C, H, W) uint8, labels (N,) int64) per split."""
from pathlib import Path

import torch
import torchvision
from torchvision.io import ImageReadMode, decode_image, read_file

from utils.errors import ConfigError, UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset is not where the config says; the message says where we looked and what to do."""


# Where each torchvision dataset keeps its files under data.root.
LAYOUT = {"MNIST": "MNIST/raw/", "FashionMNIST": "FashionMNIST/raw/", "CIFAR10": "cifar-10-batches-py/"}


def _torchvision(cls, name: str, root: str, train: bool, download: bool):
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
    ds = _torchvision(torchvision.datasets.MNIST, "MNIST", root, train, download)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


def load_fashion_mnist(root: str, train: bool, download: bool = False):
    ds = _torchvision(torchvision.datasets.FashionMNIST, "FashionMNIST", root, train, download)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


def load_cifar10(root: str, train: bool, download: bool = False):
    ds = _torchvision(torchvision.datasets.CIFAR10, "CIFAR-10", root, train, download)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return images, torch.tensor(ds.targets, dtype=torch.long)


def load_image_folder(root: str, train: bool, download: bool = False):
    """``root/{train,test}/<class>/<image>``, classes in sorted order (CIFAR-10's label order)."""
    if download:
        raise ConfigError("data.download=True is invalid for an image folder: allowed false (the folder must exist)")
    split = Path(root) / ("train" if train else "test")
    if not split.is_dir():
        raise DatasetNotFoundError(
            f"image folder not found: no {split.name}/ under data.root={root!r} ({split.resolve()}); set "
            f"data.root=<folder holding train/<class>/*.jpg and test/<class>/*.jpg>, or export DATA_ROOT=<folder> "
            f"(data=cifar10_folder reads $DATA_ROOT/cifar10-jpeg75; without it ../shared/data/cifar10-jpeg75)")
    samples = torchvision.datasets.ImageFolder(str(split)).samples  # [(path, class_index)], sorted
    images = torch.stack([decode_image(read_file(path), mode=ImageReadMode.RGB) for path, _ in samples])
    return images, torch.tensor([label for _, label in samples], dtype=torch.long)


SOURCES = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "image_folder": load_image_folder,
}
