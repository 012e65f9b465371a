"""An in-memory batch loader: seeded shuffle, whole-batch augmentation, fused normalisation.

The dataset lives as one uint8 tensor (N, C, H, W). Each epoch draws, from a generator seeded by
(seed, epoch), a permutation and every image's crop offset and flip at once, so an epoch is a pure
function of (seed, epoch): resuming at batch k of epoch e needs no saved generator, and under DDP
every rank sees the same permutation and takes its own slice of each global batch.

``flip``: False (never), True (each image flipped with probability 1/2, drawn anew each epoch) or ``alternating``
(airbench94): each image gets one coin for the run; in epoch e it is flipped iff coin XOR (e odd), so every image
is seen flipped in exactly one of any two consecutive epochs.
"""
import itertools
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import require


PAD_MODES = {"zeros": "constant", "reflect": "reflect"}  # data.pad_mode -> F.pad's mode


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator whose stream depends on (seed, epoch) with no collisions between pairs."""
    (state,) = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state))


def run_generator(seed: int) -> torch.Generator:
    """A generator for draws made once per run, apart from every (seed, epoch) stream: a spawn key pads the
    entropy to numpy's 4-word pool and appends itself, so the pool never equals an [seed, epoch] one."""
    (state,) = np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state))


class BatchLoader:
    """Yields (inputs float32 normalised, labels int64) batches from uint8 images held in memory on ``device``,
    in ``memory_format``.

    ``batch_size`` is per process; with ``world_size`` ranks a global batch holds
    ``batch_size * world_size`` examples, rank ``rank`` taking the rank-th slice of it.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], shuffle: bool, drop_last: bool,
                 crop_padding: int = 0, pad_mode: str = "zeros", flip: bool | str = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", memory_format: torch.memory_format = torch.contiguous_format):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        require(batch_size >= 1, "data.batch_size", batch_size, "an integer >= 1")
        require(isinstance(flip, bool) or flip == "alternating", "data.flip", flip, "true, false or alternating")
        require(crop_padding >= 0, "data.crop_padding", crop_padding, "an integer >= 0")
        require(pad_mode in PAD_MODES, "data.pad_mode", pad_mode, "one of " + ", ".join(PAD_MODES))
        require(0 <= rank < world_size, "rank", rank, f"an integer in [0, world_size={world_size})")
        self.images, self.labels = images.to(device), labels.to(device)  # the whole uint8 set: 150 MB for CIFAR-10
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.crop_padding, self.pad_mode, self.flip, self.seed = crop_padding, pad_mode, flip, seed
        self.rank, self.world_size, self.memory_format = rank, world_size, memory_format
        channels = images.shape[1]
        mean_255 = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1) * 255  # (1, C, 1, 1)
        std_255 = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1) * 255
        self._mean, self._inv_std = mean_255.to(device), (1 / std_255).to(device)
        self.epoch, self.start_batch = 0, 0
        self._coin_cache: torch.Tensor | None = None

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation; the next iteration starts at batch ``start_batch``."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        n, g = self.num_examples, self.global_batch_size
        return n // g if self.drop_last else -(-n // g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, dy, dx, flip = self._epoch_plan()
        start, self.start_batch = self.start_batch, 0
        g, b = self.global_batch_size, self.batch_size
        for i in range(start, len(self)):
            glob = slice(i * g, min((i + 1) * g, self.num_examples))
            if self.shuffle:
                local = slice(glob.start + self.rank * b, min(glob.start + (self.rank + 1) * b, glob.stop))
            else:  # evaluation: interleave so every rank gets a share of a short last batch
                local = slice(glob.start + self.rank, glob.stop, self.world_size)
            idx = order[local]
            yield self._make_batch(idx, dy[local], dx[local], flip[local]), self.labels[idx]

    def sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples (all if fewer) chosen by a fixed permutation, not augmented: a sample of every class
        even when the dataset is stored class by class (an image folder)."""
        idx = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(seed))[:n]
        idx = idx.sort().values.to(self.images.device)
        return self._normalise(self.images[idx]), self.labels[idx]

    def _epoch_plan(self):
        n, p, device = self.num_examples, self.crop_padding, self.images.device
        gen = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen) if p else torch.zeros(n, dtype=torch.long)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen) if p else torch.zeros(n, dtype=torch.long)
        if self.flip == "alternating":
            flip = self._coins()[order] ^ bool(self.epoch % 2)
        elif self.flip:
            flip = torch.randint(0, 2, (n,), generator=gen).bool()
        else:
            flip = torch.zeros(n, dtype=torch.bool)
        return order.to(device), dy.to(device), dx.to(device), flip.to(device)

    def _coins(self) -> torch.Tensor:
        """The alternating flip's coin of each image (bool (N,)), drawn once per run from the seed."""
        if self._coin_cache is None:
            self._coin_cache = torch.randint(0, 2, (self.num_examples,), generator=run_generator(self.seed)).bool()
        return self._coin_cache

    def _make_batch(self, idx, dy, dx, flip) -> torch.Tensor:
        x = self.images[idx]  # (B, C, H, W) uint8
        if self.crop_padding or self.flip:
            x = self._crop_and_flip(x, dy, dx, flip)
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 (x - 255 mean) / (255 std), in the loader's memory format."""
        x = x.to(torch.float32, memory_format=self.memory_format)
        return x.sub_(self._mean).mul_(self._inv_std)

    def _crop_and_flip(self, x, dy, dx, flip) -> torch.Tensor:
        """Random crop from the padded image (zeros, or the image reflected at its edges) and horizontal flip, as a
        gather of rows then one of columns over the batch (broadcast indices: no per-pixel index tensor)."""
        bsz, ch, h, w = x.shape
        p = self.crop_padding
        padded = F.pad(x, (p, p, p, p), mode=PAD_MODES[self.pad_mode]) if p else x  # (B, C, H+2p, W+2p)
        rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = torch.arange(w, device=x.device).expand(bsz, w)
        cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # (B, W)
        x = padded.gather(2, rows[:, None, :, None].expand(bsz, ch, h, padded.shape[3]))  # (B, C, H, W+2p)
        return x.gather(3, cols[:, None, None, :].expand(bsz, ch, h, w))  # (B, C, H, W)


def batches_forever(loader: BatchLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches, epoch after epoch (epoch 0, 1, ...), as a run sees them."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader
