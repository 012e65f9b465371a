"""Time `optimizer.step()` over ResNet-56's parameters: ours (foreach path) against torch.optim(foreach=True).

    python benchmarks/optimizer_step.py [--rounds 7] [--steps 50] [--threads 2]

Both optimizers update their own copy of the 853,018 parameters (167 tensors of a CIFAR ResNet-56) with the same
fixed gradients. Each round times `steps` back-to-back steps of ours, then of torch's (the order alternates
between rounds); the table reports the median time per step over rounds and the median over rounds of the
ratio ours/torch (target <= 1.10). A round's two runs are adjacent in time, so the ratio of a round is less
sensitive than the times themselves to other load on a shared machine.
"""

import argparse
import statistics
import time

import torch

from optimizers.adagrad import Adagrad
from optimizers.adam import Adam, AdamW
from optimizers.radam import RAdam
from optimizers.rmsprop import RMSprop
from optimizers.sgd import SGD


def resnet56_shapes(n: int = 9, widths: tuple[int, ...] = (16, 32, 64), classes: int = 10) -> list[tuple]:
    """Parameter shapes of a CIFAR ResNet-6n+2 with option-A shortcuts (He et al. 2016): stem conv + BN,
    3 stages of n basic blocks (two 3x3 convs, each with BN weight and bias), linear head."""
    shapes = [(widths[0], 3, 3, 3), (widths[0],), (widths[0],)]
    in_ch = widths[0]
    for width in widths:
        for _ in range(n):
            shapes += [(width, in_ch, 3, 3), (width,), (width,), (width, width, 3, 3), (width,), (width,)]
            in_ch = width
    return shapes + [(classes, in_ch), (classes,)]


def make_params(shapes: list[tuple], seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator) * 0.1) for shape in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 0.01
    return params


CASES = {
    "SGD (momentum)": (SGD, torch.optim.SGD, dict(lr=0.01, momentum=0.9, weight_decay=5e-4)),
    "SGD (nesterov)": (SGD, torch.optim.SGD, dict(lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)),
    "RMSprop": (RMSprop, torch.optim.RMSprop, dict(lr=1e-3)),
    "Adagrad": (Adagrad, torch.optim.Adagrad, dict(lr=1e-2)),
    "Adam": (Adam, torch.optim.Adam, dict(lr=1e-3)),
    "AdamW": (AdamW, torch.optim.AdamW, dict(lr=1e-3, weight_decay=1e-2)),
    "RAdam": (RAdam, torch.optim.RAdam, dict(lr=1e-3)),
}


def time_steps(optimizer: torch.optim.Optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = resnet56_shapes()
    print(f"{len(shapes)} tensors, {sum(torch.Size(s).numel() for s in shapes):,} parameters, "
          f"{args.rounds} rounds x {args.steps} steps, {args.threads} threads")
    print(f"{'optimizer':<16} {'ours ms':>8} {'torch ms':>9} {'ratio':>6}")
    for name, (ours_cls, torch_cls, kwargs) in CASES.items():
        ours = ours_cls(make_params(shapes), foreach=True, **kwargs)
        ref = torch_cls(make_params(shapes), foreach=True, **kwargs)
        timings = {ours: [], ref: []}
        for optimizer in timings:
            time_steps(optimizer, 5)
        for r in range(args.rounds):
            for optimizer in (ours, ref) if r % 2 == 0 else (ref, ours):
                timings[optimizer].append(time_steps(optimizer, args.steps))
        ratio = statistics.median(a / b for a, b in zip(timings[ours], timings[ref]))
        ours_s, ref_s = statistics.median(timings[ours]), statistics.median(timings[ref])
        print(f"{name:<16} {ours_s * 1e3:8.3f} {ref_s * 1e3:9.3f} {ratio:6.2f}")


if __name__ == "__main__":
    main()
