"""Data: sources become uint8 tensors in memory, served by a seeded whole-batch loader.

Three splits: ``train`` and ``val`` (``val_split`` training images held out, class-stratified, the same for every
run seed) from the source's training set, ``test`` from its test set. Model selection reads ``val`` only.
"""
import math
from dataclasses import dataclass

import torch

from data.loader import BatchLoader, batches_forever
from data.sources import SOURCES, DataError, DatasetNotFoundError
from utils.errors import ConfigError, require

__all__ = ["BatchLoader", "DataError", "DatasetNotFoundError", "ImageData", "batches_forever", "build", "subset"]

SUBSET_SEED = 0  # subsets are the first N of this one fixed permutation, whatever the run's seed
SPLIT_SEED = 0  # the validation split likewise: every run of a sweep validates on the same images


@dataclass
class ImageData:
    train: BatchLoader
    val: BatchLoader | None  # None when val_split=0: nothing to select on
    test: BatchLoader
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


def stratified_split(labels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): ``n`` indices held out, class c getting its share n * N_c / N (largest
    remainders round, so the shares sum to n), each class's drawn by one fixed permutation; both ascending."""
    if not 0 <= n < len(labels):
        raise ValueError(f"data.val_split={n} is out of range: must be in [0, {len(labels) - 1}]")
    counts = torch.bincount(labels)
    quota = counts.double() * n / len(labels)
    share = quota.floor().long()
    share[torch.argsort(quota - share, descending=True, stable=True)[:n - int(share.sum())]] += 1
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    shuffled = labels[order]
    held = torch.cat([order[shuffled == c][:k] for c, k in enumerate(share.tolist())])
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held] = False
    return keep.nonzero().squeeze(1), held.sort().values


def check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Every label in [0, num_classes), or a DataError naming the first one outside."""
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{where} has label {int(labels[i])} at example {i} ({len(bad)} such), outside "
                        f"[0, {num_classes}) for data.num_classes={num_classes}")


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
          eval_batch_size: int = 1000, val_split: int = 0, train_subset: int | None = None,
          val_subset: int | None = None, test_subset: int | None = None, crop_padding: int = 0,
          pad_mode: str = "zeros", flip: bool | str = False, seed: int = 0, num_classes: int, in_channels: int,
          image_size: int, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
          memory_format: torch.memory_format = torch.contiguous_format, progress: bool = False) -> ImageData:
    """Load the source's two splits into memory, hold ``val_split`` training images out, and wrap all three in
    loaders holding them on ``device``, rank ``rank`` of ``world_size`` reading its own share of each batch.
    Subsets (quick runs) are taken after the split, from each part: a test image never reaches train or val.

    ``num_classes``, ``in_channels`` and ``image_size`` are the config's promise (models read them
    by interpolation before any data is loaded); they are checked against the data here. ``progress``: a bar while
    an image folder decodes.
    """
    require(source in SOURCES, "data.source", source, f"one of {', '.join(SOURCES)}")
    load = SOURCES[source]
    shown = {"progress": progress} if source == "image_folder" else {}  # the one source decoded file by file
    train_x, train_y = load(root, train=True, download=download, **shown)
    test_x, test_y = load(root, train=False, download=download, **shown)
    for split, labels in (("train", train_y), ("test", test_y)):
        check_labels(labels, num_classes, f"the {split} split of {source} at data.root={root!r}")
    found = (int(train_y.max()) + 1, train_x.shape[1], train_x.shape[-1])
    if found != (num_classes, in_channels, image_size):
        raise ConfigError(f"data at {root!r} has (classes, channels, size)={found}, but the config says "
                         f"{(num_classes, in_channels, image_size)}")
    train_idx, val_idx = stratified_split(train_y, val_split)
    train_x, train_y, val_x, val_y = train_x[train_idx], train_y[train_idx], train_x[val_idx], train_y[val_idx]
    mean, std = channel_stats(train_x)  # the training part's statistics, subset or not
    common = dict(mean=mean, std=std, seed=seed, rank=rank, world_size=world_size, device=device,
                  memory_format=memory_format)

    def evaluation(images, labels, n):
        return BatchLoader(*subset(images, labels, n), batch_size=eval_batch_size, shuffle=False, drop_last=False,
                           **common)

    train = BatchLoader(*subset(train_x, train_y, train_subset), batch_size=batch_size, shuffle=True,
                        drop_last=True, crop_padding=crop_padding, pad_mode=pad_mode, flip=flip, **common)
    val = evaluation(val_x, val_y, val_subset) if val_split else None
    return ImageData(train, val, evaluation(test_x, test_y, test_subset), num_classes, in_channels, image_size,
                     mean, std)
