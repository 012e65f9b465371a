"""Datasets as uint8 tensors: (images (N, C, H, W) uint8, labels (N,) int64) per split."""
from pathlib import Path

import torch
import torchvision
from torchvision.io import ImageReadMode, decode_image, read_file


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not where the config says; the message says where we looked and what to do."""


def _torchvision(cls, name: str, root: str, train: bool, download: bool):
    try:
        return cls(root=root, train=train, download=download)
    except RuntimeError as e:
        hint = "set data.download=true (needs network)" if not download else f"download failed: {e}"
        raise DatasetNotFoundError(
            f"{name} not found under data.root={root!r} (looked in {Path(root) / cls.__name__}); "
            f"point data.root at a folder holding {cls.__name__}/ in torchvision's layout, or {hint}") from None


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
        raise ValueError("data.download=true is not possible for an image folder; set data.download=false")
    split = Path(root) / ("train" if train else "test")
    if not split.is_dir():
        raise DatasetNotFoundError(
            f"image folder {split} does not exist; point data.root at a folder with train/ and test/ "
            f"subfolders holding one folder of images per class")
    samples = torchvision.datasets.ImageFolder(str(split)).samples  # [(path, class_index)], sorted
    images = torch.stack([decode_image(read_file(path), mode=ImageReadMode.RGB) for path, _ in samples])
    return images, torch.tensor([label for _, label in samples], dtype=torch.long)


SOURCES = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "image_folder": load_image_folder,
}
