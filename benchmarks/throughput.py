"""Training throughput: the Trainer against the usual PyTorch recipe and against a bare loop, in one process.

    python benchmarks/throughput.py [--data-root DIR] [--case "model=resnet20" ...] [--steps 30] [--rounds 5]
                                    [--threads 2] [--ref-workers 0]

Each case is a list of Hydra overrides on the real default config with ``data=cifar10_folder`` (default cases:
``model=mlp``, ``model=resnet20``, ``model=resnet56``). Per case, three ways of training the same model for
``steps`` steps of ``data.batch_size`` images, adjacent in time, the order rotating between rounds:

- trainer: ``cli.compose.build_trainer(cfg)`` and ``Trainer.fit`` paused every ``steps`` steps; images/s is the
  Trainer's own clock (``train_images / stopwatch.total``, what ``summary.json`` reports as train_images_per_sec);
- bare loop: the same model, in-memory batches (the Trainer's loader), precision, memory format and optimizer,
  as forward, loss, backward, step, zero_grad and nothing else: Trainer / bare measures the framework's overhead;
- usual recipe: torchvision transforms (RandomCrop with padding 4, RandomHorizontalFlip, ToTensor, Normalize)
  on PIL images made from the in-memory uint8 arrays (what ``torchvision.datasets.CIFAR10`` does), a DataLoader
  with ``--ref-workers`` workers, NCHW float32, ``torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4)``.

Ratios are the median over rounds of each round's ratio (a round's runs are adjacent, so a ratio suffers less
from other load on the machine than the absolute numbers). GFLOP/s counts the model's forward FLOPs
(``FlopCounterMode``: convolutions and matrix products) x 3 for forward and backward; % peak compares it with a
2048^3 matrix product measured here in the precision the run computes in (bf16 or fp32), measured once and only when
a case needs it (a CPU without bf16 instructions emulates a bf16 product, which takes minutes at that size).
"""
import argparse
import copy
import dataclasses
import functools
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torchvision.transforms as T
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import optimizers  # noqa: E402
from cli.compose import build_trainer  # noqa: E402
from data import batches_forever  # noqa: E402
from training.precision import DTYPES  # noqa: E402
from utils.memory import keep_freed_memory  # noqa: E402

DEFAULT_CASES = ("model=mlp", "model=resnet20", "model=resnet56")
VARIANTS = ("usual", "bare", "trainer")
MATMUL_DTYPES = {"fp32": torch.float32, **DTYPES}


@functools.cache
def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best-of-3 rate of an n x n matrix product in ``dtype``: the machine's practical peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n ** 3 / best / 1e9


def forward_flops_per_image(model: nn.Module, image_shape: tuple[int, ...]) -> float:
    model = copy.deepcopy(model).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(2, *image_shape))
    return counter.get_total_flops() / 2


class PILImages(Dataset):
    """torchvision's CIFAR10 item path: a PIL image from an in-memory uint8 array, then ``transform``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.arrays = images.permute(0, 2, 3, 1).squeeze(-1).numpy()  # (N, H, W, C), or (N, H, W) for 1 channel
        self.labels, self.transform = labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.arrays[i])), self.labels[i]


def forever(loader: DataLoader):
    """A DataLoader's batches, pass after pass (data.batches_forever does this for the framework's loader)."""
    while True:
        yield from loader


def sgd_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches, criterion, dtype: torch.dtype | None):
    """A function timing ``steps`` plain training steps; returns images/s."""
    model.train()

    def run(steps: int) -> float:
        images, start = 0, time.perf_counter()
        for x, y in itertools.islice(batches, steps):
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            images += len(y)
        return images / (time.perf_counter() - start)
    return run


def usual_recipe(cfg, trainer, workers: int):
    data, size = trainer.data, trainer.data.image_size
    transform = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data.mean, data.std)])
    dataset = PILImages(data.train.images.cpu(), data.train.labels.cpu(), transform)
    loader = DataLoader(dataset, batch_size=data.train.batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0)
    model = instantiate(cfg.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return sgd_loop(model, optimizer, forever(loader), nn.CrossEntropyLoss(), None)


def bare_loop(cfg, trainer):
    model = copy.deepcopy(trainer.model)
    optimizer = optimizers.build(cfg.optimizer, model)
    forward = torch.compile(model) if cfg.trainer.compile else model
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    return sgd_loop(forward, optimizer, batches_forever(trainer.data.train), criterion, DTYPES.get(trainer.precision.mode))


def trainer_loop(trainer):
    def run(steps: int) -> float:
        images, seconds = trainer.train_images, trainer.stopwatch.total
        trainer.fit(stop_after_steps=trainer.global_step + steps)
        return (trainer.train_images - images) / (trainer.stopwatch.total - seconds)
    return run


def compose_case(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


def benchmark(case: str, data: list[str], *, steps: int, rounds: int, workers: int,
              peak: Callable[[str], float]) -> dict:
    """Images/s of each variant (median over rounds), ratios (median of per-round ratios), GFLOP/s, % peak.

    ``case``: space-separated overrides; ``data``: the overrides choosing the data (before the case's); ``peak``:
    the matmul GFLOP/s of a precision (``"bf16"``, ``"fp32"``).
    """
    cfg = compose_case(["trainer.sanity=skip", "trainer.progress_bar=false", "trainer.device=cpu", *data,
                        *case.split()])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(cfg, run_dir)
        # go on past the configured epochs (evaluations run off the Trainer's clock)
        trainer.options = dataclasses.replace(trainer.options, epochs=sys.maxsize)
        runs = {"usual": usual_recipe(cfg, trainer, workers), "bare": bare_loop(cfg, trainer),
                "trainer": trainer_loop(trainer)}
        for run in runs.values():  # warm-up: allocator, oneDNN primitives, DataLoader workers
            run(max(2, steps // 5))
        rates = {name: [] for name in VARIANTS}
        for r in range(rounds):
            for name in VARIANTS[r % 3:] + VARIANTS[:r % 3]:
                rates[name].append(runs[name](steps))
    flops = 3 * forward_flops_per_image(trainer.model, tuple(trainer.data.train.images.shape[1:]))
    result = {"case": case, "precision": trainer.precision.mode,
              "batch_size": trainer.data.train.batch_size, "train_gflop_per_image": flops / 1e9}
    for name in VARIANTS:
        images_per_sec = statistics.median(rates[name])
        computes_in = "fp32" if name == "usual" else trainer.precision.mode
        result[name] = {"images_per_sec": images_per_sec, "gflops": images_per_sec * flops / 1e9,
                        "pct_peak": 100 * images_per_sec * flops / 1e9 / peak(computes_in), "peak_of": computes_in}
    result["matmul_gflops"] = {result[name]["peak_of"]: peak(result[name]["peak_of"]) for name in VARIANTS}
    result["trainer_vs_usual"] = statistics.median(t / u for t, u in zip(rates["trainer"], rates["usual"]))
    result["trainer_vs_bare"] = statistics.median(t / b for t, b in zip(rates["trainer"], rates["bare"]))
    result["bare_vs_usual"] = statistics.median(b / u for b, u in zip(rates["bare"], rates["usual"]))
    return result


def table(results: list[dict]) -> str:
    lines = [f"{'case':<34} {'variant':<8} {'img/s':>7} {'GFLOP/s':>8} {'% peak':>7} {'x usual':>8} {'x bare':>7}"]
    for r in results:
        for name in VARIANTS:
            v = r[name]
            vs_usual = {"usual": 1.0, "bare": r["bare_vs_usual"], "trainer": r["trainer_vs_usual"]}[name]
            vs_bare = f"{r['trainer_vs_bare']:7.3f}" if name == "trainer" else ""
            lines.append(f"{r['case'][:34]:<34} {name:<8} {v['images_per_sec']:7.0f} {v['gflops']:8.1f} "
                         f"{v['pct_peak']:6.1f}% {vs_usual:8.2f} {vs_bare:>7}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg75"))
    parser.add_argument("--case", action="append", help="space-separated Hydra overrides; repeatable")
    parser.add_argument("--steps", type=int, default=30, help="training steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ref-workers", type=int, default=0, help="DataLoader workers of the usual recipe")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as train.py does (utils/memory.py)
    print(f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps per variant, usual recipe with "
          f"{args.ref_workers} DataLoader workers", flush=True)
    results = []
    data = ["data=cifar10_folder", f"data.root={args.data_root}"]
    for case in args.case or DEFAULT_CASES:
        results.append(benchmark(case, data, steps=args.steps, rounds=args.rounds, workers=args.ref_workers,
                                 peak=lambda precision: matmul_gflops(MATMUL_DTYPES[precision])))
        r = results[-1]
        peaks = ", ".join(f"{p} {gflops:.0f}" for p, gflops in r["matmul_gflops"].items())
        print(f"{r['case']}: {r['precision']}, batch {r['batch_size']}, {r['train_gflop_per_image']:.3f} GFLOP per "
              f"training image; matmul peak GFLOP/s: {peaks}", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
