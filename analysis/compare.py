"""Compare the runs of a sweep: ``python -m analysis.compare sweep_dir=multirun/<date>/<time>``.

Feed it ``python train.py -m experiment=optimizer_comparison`` (optimizers side by side) or
``experiment=lr_sensitivity`` (optimizer x LR). Writes into ``<sweep_dir>/compare/``:
``train_loss.png``, ``test_accuracy.png`` and ``grad_norm.png`` against epoch for every run,
``final_accuracy.png`` (bars), when some optimizer ran at two or more LRs ``lr_sensitivity.png``
(final test accuracy against LR, one line per optimizer, log x), and when the runs' LR schedules differ
(``experiment=schedule_comparison``) ``lr_schedules.png`` (each run's LR per step beside its test accuracy).
The same figures go to ``compare/tb``.
"""
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from analysis.figures import FigureWriter, plt
from analysis.runs import Run, read_runs
from cli.entry import command, run


def run_colors(n: int):
    """One colour per run: tab10, or tab20 for larger sweeps."""
    return plt.get_cmap("tab10" if n <= 10 else "tab20")(np.arange(n) % 20)


def plot_metric(runs: list[Run], key: str, ylabel: str, log: bool = False):
    fig, ax = plt.subplots(figsize=(8, 5))
    for run, color in zip(runs, run_colors(len(runs))):
        epochs, values = run.curve(key)
        ax.plot(epochs, values, "o-", color=color, label=run.label)
    finish(ax, "epoch", ylabel, f"{ylabel} per epoch", log)
    return fig


def moving_average(x: np.ndarray, y: np.ndarray, points: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """y averaged over windows of len(y) // points consecutive values (x at each window's end)."""
    window = max(1, len(y) // points)
    return x[window - 1:], np.convolve(y, np.ones(window) / window, mode="valid")


def plot_grad_norms(runs: list[Run]):
    fig, ax = plt.subplots(figsize=(8, 5))
    for run, color in zip(runs, run_colors(len(runs))):
        ax.plot(*moving_average(*run.grad_norm()), lw=1.2, color=color, label=run.label)
    finish(ax, "epoch", "gradient norm (before clipping)",
           "global gradient L2 norm during training (moving average, 1/50 of the run)", log=True)
    return fig


def plot_final_accuracy(runs: list[Run]):
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(runs) + 2), 5))
    accs = [r.final_acc for r in runs]
    bars = ax.bar(range(len(runs)), accs, color=run_colors(len(runs)))
    ax.bar_label(bars, labels=[f"{a:.3f}" for a in accs], fontsize=8)
    ax.set_xticks(range(len(runs)), [r.label for r in runs], rotation=40, ha="right", fontsize=8)
    ax.set(ylabel="final test accuracy", ylim=(0, 1.05), title="final test accuracy per run")
    return fig


def lr_curves(runs: list[Run]) -> dict[str, tuple[list[float], list[float]]]:
    """optimizer -> (LRs ascending, final accuracies), for the optimizers that ran at two or more LRs."""
    by_optimizer = defaultdict(dict)
    for run in runs:
        by_optimizer[run.optimizer][run.lr] = run.final_acc
    return {name: (sorted(accs), [accs[lr] for lr in sorted(accs)])
            for name, accs in by_optimizer.items() if len(accs) > 1}


def plot_lr_sensitivity(curves: dict[str, tuple[list[float], list[float]]]):
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (lrs, accs) in curves.items():
        ax.plot(lrs, accs, "o-", label=name)
    ax.set_xscale("log")
    finish(ax, "learning rate", "final test accuracy", "LR sensitivity: final test accuracy against LR")
    return fig


def plot_schedules(runs: list[Run]):
    """Each run's LR per step (TensorBoard ``lr``, else per epoch) beside its test accuracy per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5))
    for run, color in zip(runs, run_colors(len(runs))):
        left.plot(*(run.step_scalars("lr") or run.curve("lr")), lw=1.2, color=color, label=run.label)
        right.plot(*run.curve("val_acc"), "o-", color=color, label=f"{run.label}: {run.final_acc:.4f}")
    finish(left, "epoch", "learning rate", "LR schedule (per step)")
    finish(right, "epoch", "test accuracy", "test accuracy per epoch (final in the legend)")
    return fig


def schedules_differ(runs: list[Run]) -> bool:
    return len({json.dumps(run.config.get("scheduler"), sort_keys=True) for run in runs}) > 1


def finish(ax, xlabel: str, ylabel: str, title: str, log: bool = False) -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def compare(sweep_dir: str | Path, out_dir: str | Path) -> FigureWriter:
    """Read the sweep, draw every figure into ``out_dir`` (PNG and TensorBoard)."""
    runs = read_runs(sweep_dir)
    out = FigureWriter(out_dir, tensorboard=True)
    out.save(plot_metric(runs, "train_loss", "training loss", log=True), "train_loss")
    out.save(plot_metric(runs, "val_acc", "test accuracy"), "test_accuracy")
    out.save(plot_grad_norms(runs), "grad_norm")
    out.save(plot_final_accuracy(runs), "final_accuracy")
    curves = lr_curves(runs)
    if curves:
        out.save(plot_lr_sensitivity(curves), "lr_sensitivity")
    if schedules_differ(runs):
        out.save(plot_schedules(runs), "lr_schedules")
    for run in runs:
        print(f"{run.label:>40}: optimizer {run.optimizer}, lr {run.lr:g}, final test accuracy {run.final_acc:.4f}")
    return out


@command("compare", validate_config=False)
def main(cfg: DictConfig) -> None:
    print(compare(cfg.sweep_dir, HydraConfig.get().runtime.output_dir).report())


if __name__ == "__main__":
    run(main)
