"""The loss around a checkpoint: ``python -m analysis.landscape checkpoint=<run>/checkpoints/last.pt``.

2-D plane (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"): L(a, b) = L(w + a d1 + b d2) for
two random directions d1, d2 over the parameters, each filter-normalised (see ``filter_normalized_direction``),
on an a, b grid over [-span, span]^2. 1-D interpolation (Goodfellow et al. 2015): L((1 - t) w_0 + t w_1) from
the initial weights w_0 (t = 0) to the checkpoint's w_1 (t = 1). The initial weights are, by default, rebuilt
from the checkpoint's own saved config: its model built right after seeding with its ``trainer.seed``, which
reproduces a run's starting point exactly (``build_trainer`` does the same, model first); ``init_checkpoint=<path>``
takes them from a file instead. Every loss is the mean cross-entropy in eval mode on the same fixed ``samples``
training examples (``analysis.loading.fixed_batches``). Writes ``landscape_contour.png``,
``landscape_surface.png``, ``interpolation.png`` and ``landscape.json`` (the numbers), and TensorBoard images.
"""
import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from matplotlib.colors import LogNorm
from omegaconf import DictConfig

from analysis.figures import FigureWriter, plt
from analysis.loading import (Batches, fixed_batches, initial_model, load_checkpoint_model, mean_loss,
                              with_checkpoint_data)
from cli.entry import command, run
from utils.device import full_fp32, resolve_device
from utils.errors import require
from utils.io import save_json


def filter_normalized_direction(model: nn.Module, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """A Gaussian direction d over ``model.parameters()``, filter-normalised (Li et al. 2018, sec. 4): for each
    filter i of a parameter with 2+ dims (a conv output channel, a linear layer's output row)

        d_i <- d_i / ||d_i|| * ||w_i||

    and d = 0 on 1-D parameters (biases, BatchNorm weights and biases), which stay at their values."""
    direction = []
    for p in model.parameters():
        if p.dim() <= 1:
            direction.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        scale = p.detach().flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1).clamp_min(1e-12)  # (filters,)
        direction.append(d * scale.view(-1, *[1] * (p.dim() - 1)))
    return direction


@torch.no_grad()
def loss_plane(model: nn.Module, batches: Batches, d1: list[torch.Tensor], d2: list[torch.Tensor],
               xs, ys) -> torch.Tensor:
    """L(w + a d1 + b d2) for a in xs, b in ys: a (len(ys), len(xs)) tensor; the weights are restored."""
    params = list(model.parameters())
    origin = [p.detach().clone() for p in params]
    losses = torch.empty(len(ys), len(xs), dtype=torch.float64)
    try:
        for i, b in enumerate(ys):
            for j, a in enumerate(xs):
                torch._foreach_copy_(params, origin)
                torch._foreach_add_(params, d1, alpha=float(a))
                torch._foreach_add_(params, d2, alpha=float(b))
                losses[i, j] = mean_loss(model, batches)
    finally:
        torch._foreach_copy_(params, origin)
    return losses


@torch.no_grad()
def interpolation(model: nn.Module, start: dict, end: dict, ts, batches: Batches) -> torch.Tensor:
    """L((1 - t) start + t end) for t in ts. Every floating-point entry of the state dicts is interpolated
    (BatchNorm running statistics too); integer entries (batch counters) are taken from ``end``. ``start`` and
    ``end`` may be the model's own state dict: both are copied before the weights move."""
    start, end = copy.deepcopy(start), copy.deepcopy(end)
    saved = copy.deepcopy(model.state_dict())
    losses = []
    try:
        for t in ts:
            model.load_state_dict({k: torch.lerp(start[k], v, float(t)) if v.is_floating_point() else v
                                   for k, v in end.items()})
            losses.append(mean_loss(model, batches))
    finally:
        model.load_state_dict(saved)
    return torch.tensor(losses, dtype=torch.float64)


def plot_contour(xs, ys, losses: np.ndarray):
    """Filled contours at log-spaced levels; a loss of exactly 0 (a net that fits its samples perfectly in float32)
    is drawn at the smallest positive loss of the plane, which a log scale can show."""
    fig, ax = plt.subplots(figsize=(7, 6))
    positive = losses[losses > 0]
    losses = np.maximum(losses, positive.min() if positive.size else np.finfo(np.float32).tiny)
    levels = np.logspace(np.log10(losses.min()), np.log10(losses.max()), 30)
    filled = ax.contourf(xs, ys, losses, levels=levels, norm=LogNorm(), cmap="viridis")
    ax.contour(xs, ys, losses, levels=levels[::2], colors="white", linewidths=0.5, alpha=0.6)
    ax.plot(0, 0, "r*", markersize=14, markeredgecolor="white", label="checkpoint")
    fig.colorbar(filled, ax=ax, label="loss (log-spaced levels)", format="%.3g")
    ax.set(xlabel="a (direction d1)", ylabel="b (direction d2)",
           title="loss on the plane w + a d1 + b d2 (filter-normalised d1, d2)")
    ax.legend(loc="upper right")
    return fig


def plot_surface(xs, ys, losses: np.ndarray):
    fig = plt.figure(figsize=(8, 6.5))
    ax = fig.add_subplot(projection="3d")
    a, b = np.meshgrid(xs, ys)
    ax.plot_surface(a, b, losses, cmap="viridis", edgecolor="none", antialiased=True)
    ax.set(xlabel="a", ylabel="b", zlabel="loss", title="loss surface around the checkpoint")
    ax.view_init(elev=35, azim=-60)
    return fig


def plot_interpolation(ts, losses: np.ndarray, init_source: str):
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(ts, losses, "o-", ms=3)
    for t, name in ((0, "initial"), (1, "checkpoint")):
        ax.axvline(t, color="gray", ls="--", lw=0.8)
        ax.annotate(name, (t, losses.max()), ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="t", ylabel="loss", yscale="log",
           title=f"loss along (1 - t) w_init + t w_final (w_init: {init_source})")
    ax.grid(alpha=0.3, which="both")
    return fig


def initial_state(saved: DictConfig, init_checkpoint: str | None) -> tuple[dict, str]:
    """The starting weights of the run and where they came from."""
    if init_checkpoint is not None:
        return load_checkpoint_model(init_checkpoint)[0].state_dict(), init_checkpoint
    model = initial_model(saved.model, saved.trainer.seed)
    return model.state_dict(), f"rebuilt with seed {saved.trainer.seed}"


@full_fp32()  # the lab reports IEEE fp32 numbers, whatever trainer.tf32 says
def landscape(cfg: DictConfig, out_dir: str | Path) -> FigureWriter:
    require(cfg.resolution >= 2, "resolution", cfg.resolution, "an integer >= 2")
    require(cfg.span > 0, "span", cfg.span, "a number > 0")
    device = resolve_device(cfg.trainer.device)
    model, saved = load_checkpoint_model(cfg.checkpoint, cfg.data)
    model.to(device)
    batches = fixed_batches(instantiate(cfg.data), cfg.samples, cfg.data.eval_batch_size, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    d1, d2 = (filter_normalized_direction(model, generator) for _ in range(2))
    xs = ys = np.linspace(-cfg.span, cfg.span, cfg.resolution)
    plane = loss_plane(model, batches, d1, d2, xs, ys).numpy()
    start, init_source = initial_state(saved, cfg.init_checkpoint)
    ts = np.linspace(*cfg.interpolation.range, cfg.interpolation.points)
    line = interpolation(model, {k: v.to(device) for k, v in start.items()}, model.state_dict(), ts, batches).numpy()
    out = FigureWriter(out_dir, tensorboard=True)
    out.save(plot_contour(xs, ys, plane), "landscape_contour")
    out.save(plot_surface(xs, ys, plane), "landscape_surface")
    out.save(plot_interpolation(ts, line, init_source), "interpolation")
    centre = plane[cfg.resolution // 2, cfg.resolution // 2] if cfg.resolution % 2 else None
    save_json({"checkpoint": str(cfg.checkpoint), "samples": cfg.samples, "seed": cfg.seed, "axis": xs.tolist(),
               "loss": plane.tolist(), "centre_loss": centre, "init": init_source,
               "interpolation": {"t": ts.tolist(), "loss": line.tolist()}}, out.out_dir / "landscape.json")
    out.add(out.out_dir / "landscape.json")
    print(f"loss at the checkpoint {mean_loss(model, batches):.4f}; on the plane min {plane.min():.4f}, "
          f"max {plane.max():.4f}; at init (t=0) {line[np.argmin(np.abs(ts))]:.4f}")
    return out


@command("landscape")
def main(cfg: DictConfig) -> None:
    cfg = with_checkpoint_data(cfg, HydraConfig.get().overrides.task)
    print(landscape(cfg, HydraConfig.get().runtime.output_dir).report())


if __name__ == "__main__":
    run(main)
