"""Data: sources become uint8 tensors in memory, served by a seeded whole-batch loader."""
import math
from dataclasses import dataclass

import torch

from data.loader import BatchLoader, batches_forever
from data.sources import SOURCES, DatasetNotFoundError
from utils.errors import ConfigError, require

__all__ = ["BatchLoader", "DatasetNotFoundError", "ImageData", "batches_forever", "build", "subset"]

SUBSET_SEED = 0  # subsets are the first N of this one fixed permutation, whatever the run's seed


@dataclass
class ImageData:
    train: BatchLoader
    val: BatchLoader
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def subset(images: torch.Tensor, labels: torch.Tensor, n: int | None):
    """The first ``n`` examples of a fixed permutation (all of them when ``n`` is None)."""
    if n is None:
        return images, labels
    require(0 < n <= len(labels), "subset size", n, f"an integer in [1, {len(labels)}] or null")
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n]
    return images[idx], labels[idx]


def channel_stats(images: torch.Tensor, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (sample) std in [0, 1] units, from exact integer sums over ``chunk`` images at a time.

    With n values x per channel, S1 = Σx and S2 = Σx² (integers: x is uint8), mean = S1 / n and
    var = (n S2 - S1²) / (n (n - 1)), both divided by 255 (255² for var). No float copy of the whole set is made
    (a float64 one of CIFAR-10 is 1.2 GB, in every process under torchrun).
    """
    channels = images.shape[1]
    sums = torch.zeros(2, channels, dtype=torch.int64)
    for part in images.split(chunk):
        x = part.transpose(0, 1).reshape(channels, -1).to(torch.int64)
        sums += torch.stack([x.sum(1), x.square().sum(1)])
    n = images.numel() // channels
    s1, s2 = sums.tolist()
    mean = tuple(a / n / 255 for a in s1)
    std = tuple(math.sqrt((n * b - a * a) / (n * (n - 1))) / 255 for a, b in zip(s1, s2))
    return mean, std


def build(*, source: str, root: str, download: bool = False, batch_size: int = 128,
          eval_batch_size: int = 1000, train_subset: int | None = None, val_subset: int | None = None,
          crop_padding: int = 0, flip: bool = False, seed: int = 0, num_classes: int, in_channels: int,
          image_size: int, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
          memory_format: torch.memory_format = torch.contiguous_format) -> ImageData:
    """Load both splits into memory and wrap them in loaders holding them on ``device``, rank ``rank`` of
    ``world_size`` reading its own share of each batch.

    ``num_classes``, ``in_channels`` and ``image_size`` are the config's promise (models read them
    by interpolation before any data is loaded); they are checked against the data here.
    """
    require(source in SOURCES, "data.source", source, f"one of {', '.join(SOURCES)}")
    load = SOURCES[source]
    train_x, train_y = load(root, train=True, download=download)
    val_x, val_y = load(root, train=False, download=download)
    mean, std = channel_stats(train_x)  # the full training split's statistics, subset or not
    found = (int(train_y.max()) + 1, train_x.shape[1], train_x.shape[-1])
    if found != (num_classes, in_channels, image_size):
        raise ConfigError(f"data at {root!r} has (classes, channels, size)={found}, but the config says "
                         f"{(num_classes, in_channels, image_size)}")
    train_x, train_y = subset(train_x, train_y, train_subset)
    val_x, val_y = subset(val_x, val_y, val_subset)
    common = dict(mean=mean, std=std, seed=seed, rank=rank, world_size=world_size, device=device,
                  memory_format=memory_format)
    train = BatchLoader(train_x, train_y, batch_size=batch_size, shuffle=True, drop_last=True,
                        crop_padding=crop_padding, flip=flip, **common)
    val = BatchLoader(val_x, val_y, batch_size=eval_batch_size, shuffle=False, drop_last=False, **common)
    return ImageData(train, val, num_classes, in_channels, image_size, mean, std)
