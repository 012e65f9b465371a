"""Figures of optimizer paths on a 2-D function: contours with paths, loss per step, and an animated GIF."""
from pathlib import Path

import numpy as np
import torch
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.colors import LogNorm

from analysis.figures import plt
from analysis.toy.functions import ToyFunction
from analysis.toy.paths import Trajectory

FLOOR = 1e-12  # f - f_min is drawn on log scales; values below this are shown as this


def gap_grid(fn: ToyFunction, size: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w1, w2 meshes over fn.box and f - f_min on them, floored at FLOOR."""
    x0, x1, y0, y1 = fn.box
    w1, w2 = torch.meshgrid(torch.linspace(x0, x1, size, dtype=torch.float64),
                            torch.linspace(y0, y1, size, dtype=torch.float64), indexing="xy")
    gap = (fn.f(torch.stack([w1, w2])) - fn.f_min).clamp_min(FLOOR)
    return w1.numpy(), w2.numpy(), gap.numpy()


def contour_axes(fn: ToyFunction, ax, size: int = 300) -> None:
    """Filled contours of f - f_min at log-spaced levels on a size x size grid, the minima as stars."""
    w1, w2, gap = gap_grid(fn, size)
    low = max(np.percentile(gap, 0.5), 1e-3)
    levels = np.logspace(np.log10(low), np.log10(gap.max()), 30)
    ax.contourf(w1, w2, gap, levels=levels, norm=LogNorm(), cmap="viridis", alpha=0.85, extend="both")
    ax.contour(w1, w2, gap, levels=levels[::3], norm=LogNorm(), colors="white", linewidths=0.4, alpha=0.5)
    for m in fn.minima:
        ax.plot(*m, marker="*", color="red", markersize=14, markeredgecolor="white")
    ax.set(xlim=fn.box[:2], ylim=fn.box[2:], xlabel="w1", ylabel="w2")


def colors(n: int):
    return plt.get_cmap("tab10")(np.arange(n) % 10)


def styles(n: int) -> list[str]:
    """Alternating line styles, so paths that coincide (Adam and AdamW without weight decay) both show."""
    return [("-", "--", "-.", ":")[i % 4] for i in range(n)]


def plot_paths(fn: ToyFunction, paths: list[Trajectory]):
    fig, ax = plt.subplots(figsize=(8, 7))
    contour_axes(fn, ax)
    for p, c, ls in zip(paths, colors(len(paths)), styles(len(paths))):
        ax.plot(p.points[:, 0], p.points[:, 1], ls, color=c, lw=1.5, label=p.optimizer)
        ax.plot(*p.points[-1], "o", color=c, markeredgecolor="black")
    ax.plot(*paths[0].points[0], "s", color="white", markeredgecolor="black", label="start")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the contours: no path covered
    ax.set_title(f"{fn.name}: optimizer paths over contours of f - f_min (log-spaced levels)")
    return fig


def plot_losses(fn: ToyFunction, paths: list[Trajectory]):
    fig, ax = plt.subplots(figsize=(8, 5))
    for p, c, ls in zip(paths, colors(len(paths)), styles(len(paths))):
        gap = (p.losses - fn.f_min).clamp_min(FLOOR)
        ax.semilogy(gap, ls, color=c, label=p.optimizer + (" (diverged)" if p.diverged else ""))
    ax.set(xlabel="step", ylabel="f(w_t) - f_min", title=f"{fn.name}: loss per step")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3, which="both")
    return fig


def animate(fn: ToyFunction, paths: list[Trajectory], path: Path, frames: int = 48, max_points: int = 400) -> Path:
    """A GIF in which every path grows to step t = (frame + 1) * steps / frames; each line is drawn through at
    most ``max_points`` of its points (every k-th, plus the current one) to keep the frames cheap."""
    fig, ax = plt.subplots(figsize=(6, 5.2))
    contour_axes(fn, ax, size=150)
    points = [p.points.numpy() for p in paths]
    lines = [ax.plot([], [], ls, color=c, lw=1.5, label=p.optimizer)[0]
             for p, c, ls in zip(paths, colors(len(paths)), styles(len(paths)))]
    heads = [ax.plot([], [], "o", color=c, markeredgecolor="black")[0] for c in colors(len(paths))]
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    longest = max(len(p) for p in points)
    stride = max(1, -(-longest // max_points))

    def draw(frame: int):
        t = round((frame + 1) * (longest - 1) / frames)
        for p, line, head in zip(points, lines, heads):
            last = min(t, len(p) - 1)
            shown = np.concatenate([p[:last:stride], p[last:last + 1]])
            line.set_data(shown[:, 0], shown[:, 1])
            head.set_data(shown[-1:, 0], shown[-1:, 1])
        ax.set_title(f"{fn.name}: step {t}")
        return [*lines, *heads]

    FuncAnimation(fig, draw, frames=frames, blit=False).save(path, writer=PillowWriter(fps=12), dpi=72)
    plt.close(fig)
    return path
