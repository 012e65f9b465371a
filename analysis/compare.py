"""Compare the runs of a sweep: ``python -m analysis.compare sweep_dir=multirun/<date>/<time>``.

Runs that differ only in their seed (``trainer.seed=0,1,2``) are one group: every figure shows a group's mean and
a band (``band=std``: +- one sample standard deviation; ``band=ci95``: the 95% Student-t interval of the mean,
t_{0.975, n-1} s / sqrt(n)). Feed it ``python train.py -m experiment=optimizer_comparison`` or
``experiment=lr_sensitivity``. Writes into ``<sweep_dir>/compare/``: ``train_loss.png``, ``val_accuracy.png`` (when
the runs held images out), ``error.png`` (training and val error, He et al. 2016's Fig. 6) and ``grad_norm.png``
against epoch, ``final_accuracy.png`` (best val and test accuracy per group, error bars, n), ``lr_sensitivity.png``
when a setting ran at two or more LRs (best val accuracy, else test accuracy, against LR), and ``comparison.csv``
(one row per group: the varied settings, n, mean and std of best val accuracy, test accuracy and ``train_time``, the
seconds in training steps), and when the LR schedules differ (``experiment=schedule_comparison``)
``lr_schedules.png`` (each group's LR per step beside its val accuracy). Older runs' summary.json files name the
training steps' seconds ``wall_time`` (today the whole job's) and the whole job's ``process_time``: without a
``train_time`` their ``wall_time`` is read as it, so old and new sweeps compare (analysis/runs.py's
``current_names``). An Optuna sweep (``hparams_search=...``) adds ``optuna_history.png``
(each trial's best val accuracy and the best so far), ``optuna_importance.png`` (Optuna's parameter importance,
from two distinct complete trials on) and ``optuna_trials.csv``. The figures also go to ``compare/tb``.
"""
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from scipy import stats

from analysis import optuna_study
from analysis.figures import FigureWriter, plt
from analysis.runs import Group, group_runs, read_runs
from cli.entry import command, run
from utils.errors import require

BANDS = ("std", "ci95")
SCORES = ("best_val_acc", "test_acc", "train_time")  # the summary.json numbers comparison.csv reports


def spread(values: np.ndarray, band: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and the band's half-width (0 where a single run, or a single finite value, is all)."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    n = finite.sum(0)
    mean = np.where(n > 0, np.where(finite, values, 0.0).sum(0) / np.maximum(n, 1), np.nan)
    squares = np.where(finite, (values - mean) ** 2, 0.0).sum(0)
    std = np.where(n > 1, np.sqrt(squares / np.maximum(n - 1, 1)), 0.0)
    if band == "ci95":
        std = np.where(n > 1, stats.t.ppf(0.975, np.maximum(n - 1, 1)) * std / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, std


def group_colors(n: int):
    """One colour per group: tab10, or tab20 for larger sweeps."""
    return plt.get_cmap("tab10" if n <= 10 else "tab20")(np.arange(n) % 20)


def band_label(group: Group) -> str:
    return f"{group.label} (n={group.n})"


def plot_metric(groups: list[Group], key: str, ylabel: str, band: str, log: bool = False):
    fig, ax = plt.subplots(figsize=(8, 5))
    for group, color in zip(groups, group_colors(len(groups))):
        epochs, values = group.curves(key)
        mean, half = spread(values, band)
        ax.plot(epochs, mean, "o-", color=color, label=band_label(group))
        ax.fill_between(epochs, mean - half, mean + half, color=color, alpha=0.2, lw=0)
    finish(ax, "epoch", ylabel, f"{ylabel} per epoch: mean and {BAND_TEXT[band]} over seeds", log)
    return fig


def plot_error(groups: list[Group], band: str):
    """Training error (1 - train_acc, solid) and held-out error (1 - val_acc, dashed, where measured) per epoch in
    percent, one colour per group: He et al. 2016's Fig. 6 (``experiment=degradation``)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for group, color in zip(groups, group_colors(len(groups))):
        for key, style, name in (("train_acc", "-", "train"), ("val_acc", "--", "val")):
            epochs, values = group.curves(key)
            if not len(epochs):
                continue
            mean, half = spread(100 * (1 - values), band)
            ax.plot(epochs, mean, style, lw=2 if key == "train_acc" else 1, color=color,
                    label=f"{band_label(group)} {name}: {mean[-1]:.1f}%")
            ax.fill_between(epochs, mean - half, mean + half, color=color, alpha=0.15, lw=0)
    finish(ax, "epoch", "error (%)", f"training error (solid) and val error (dashed), mean and {BAND_TEXT[band]} "
           "(last epoch in the legend)")
    return fig


def moving_average(x: np.ndarray, y: np.ndarray, points: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """y averaged over windows of len(y) // points consecutive values (x at each window's end)."""
    window = max(1, len(y) // points)
    return x[window - 1:], np.convolve(y, np.ones(window) / window, mode="valid")


def plot_grad_norms(groups: list[Group], band: str):
    fig, ax = plt.subplots(figsize=(8, 5))
    for group, color in zip(groups, group_colors(len(groups))):
        curves = [moving_average(*run.grad_norm()) for run in group.runs]
        length = min(len(x) for x, _ in curves)
        mean, half = spread(np.stack([y[:length] for _, y in curves]), band)
        x = curves[0][0][:length]
        ax.plot(x, mean, lw=1.2, color=color, label=band_label(group))
        ax.fill_between(x, np.maximum(mean - half, 1e-12), mean + half, color=color, alpha=0.2, lw=0)
    finish(ax, "epoch", "gradient norm (before clipping)",
           "global gradient L2 norm (moving average, 1/50 of the run)", log=True)
    return fig


def plot_final_accuracy(groups: list[Group], band: str):
    """A bar per group for best val accuracy and for test accuracy (each where some run recorded it), each
    mean +- band, n written above."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups) + 2), 5))
    x, lowest = np.arange(len(groups)), 1.0
    shown = [(name, text) for name, text in (("best_val_acc", "best val accuracy"), ("test_acc", "test accuracy"))
             if any(np.isfinite(g.scores(name)).any() for g in groups)]
    width = 0.8 / max(len(shown), 1)
    for i, (name, text) in enumerate(shown):
        means, halves = map(np.array, zip(*(spread(g.scores(name), band) for g in groups)))
        bars = ax.bar(x + (i - (len(shown) - 1) / 2) * width, means, width, yerr=halves, capsize=3, label=text)
        ax.bar_label(bars, labels=[f"{m:.4f}" for m in means], fontsize=6, padding=2, rotation=90)
        lowest = min(lowest, np.nanmin(means, initial=1.0))
    ax.set_xticks(x, [band_label(g) for g in groups], rotation=40, ha="right", fontsize=8)
    ax.set(ylabel="accuracy", ylim=(0, 1.05) if lowest < 0.6 else (0.5, 1.02),
           title=f"final accuracy per setting: mean and {BAND_TEXT[band]} over seeds")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    return fig


def lr_curves(groups: list[Group]) -> dict[str, list[Group]]:
    """Series label -> its groups by ascending LR, for every setting (the LR left out) run at two or more LRs."""
    series = defaultdict(list)
    for group in groups:
        without_lr = tuple(o for o in group.setting if not o.startswith(("optimizer.lr=", "optimizer.base.lr=")))
        series[without_lr].append(group)
    series = {key: members for key, members in series.items() if len({g.lr for g in members}) > 1}
    shared = set.intersection(*(set(key) for key in series)) if series else set()
    return {" ".join(o for o in key if o not in shared) or members[0].optimizer: sorted(members, key=lambda g: g.lr)
            for key, members in series.items()}


def plot_lr_sensitivity(curves: dict[str, list[Group]], band: str, score: str = "best_val_acc"):
    """``score`` (a summary.json accuracy) against LR, one line per setting."""
    fig, ax = plt.subplots(figsize=(8, 5))
    text = score.removesuffix("_acc").replace("_", " ") + " accuracy"
    for label, members in curves.items():
        lrs = [g.lr for g in members]
        means, halves = zip(*(spread(g.scores(score), band) for g in members))
        line, = ax.plot(lrs, means, "o-", label=f"{label} (n={min(g.n for g in members)})")
        ax.fill_between(lrs, np.subtract(means, halves), np.add(means, halves), color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    finish(ax, "learning rate", text, f"LR sensitivity: {text} against LR, mean and {BAND_TEXT[band]} over seeds")
    return fig


def plot_schedules(groups: list[Group], band: str):
    """Each group's LR per step (TensorBoard ``lr`` of its first run, else per epoch) beside its val accuracy."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5))
    for group, color in zip(groups, group_colors(len(groups))):
        run = group.runs[0]
        left.plot(*(run.step_scalars("lr") or run.curve("lr")), lw=1.2, color=color, label=group.label)
        epochs, values = group.curves("val_acc")
        mean, half = spread(values, band)
        right.plot(epochs, mean, "o-", color=color, label=f"{band_label(group)}: {mean[-1]:.4f}")
        right.fill_between(epochs, mean - half, mean + half, color=color, alpha=0.2, lw=0)
    finish(left, "epoch", "learning rate", "LR schedule (per step)")
    finish(right, "epoch", "val accuracy", f"val accuracy per epoch, mean and {BAND_TEXT[band]} (final in the legend)")
    return fig


def held_out(groups: list[Group]) -> bool:
    """Whether the runs scored held-out images per epoch (``val_acc``; none with ``data.val_split=0``)."""
    return any(len(group.curves("val_acc")[0]) for group in groups)


def schedules_differ(groups: list[Group]) -> bool:
    return len({json.dumps(run.config.get("scheduler"), sort_keys=True) for g in groups for run in g.runs}) > 1


BAND_TEXT = {"std": "+-1 std", "ci95": "95% interval"}


def finish(ax, xlabel: str, ylabel: str, title: str, log: bool = False) -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: no curve covered


def varied_settings(groups: list[Group]) -> list[dict[str, str]]:
    """Per group, ``key: value`` of the overrides that set it apart (what the sweep varied)."""
    return [dict(o.split("=", 1) for o in group.varied) for group in groups]


def comparison_rows(groups: list[Group]) -> list[dict]:
    """One row per group: the varied settings, n, the seeds, and mean / std (ddof 1) of each of ``SCORES``."""
    rows = []
    for group, varied in zip(groups, varied_settings(groups)):
        row = {**varied, "n": group.n, "seeds": " ".join(str(r.seed) for r in group.runs)}
        for name in SCORES:
            values = group.scores(name)
            finite = values[np.isfinite(values)]
            row[f"{name}_mean"] = float(finite.mean()) if finite.size else float("nan")
            row[f"{name}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def table(groups: list[Group], rows: list[dict]) -> str:
    """The rows as text: setting, n, best val acc and test acc (%) and training time (s) as mean +- std."""
    def cell(row, name, scale=100):
        mean, std = row[f"{name}_mean"] * scale, row[f"{name}_std"] * scale
        if not np.isfinite(mean):
            return "-"
        return f"{mean:.2f} +- {std:.2f}" if np.isfinite(std) else f"{mean:.2f}"
    settings = [g.label for g in groups]
    width = max(map(len, settings + ["setting"]))
    lines = [f"{'setting':<{width}}  n  best val acc %    test acc %       time s"]
    lines += [f"{s:<{width}} {row['n']:>2}  {cell(row, 'best_val_acc'):<16} {cell(row, 'test_acc'):<16} "
              f"{cell(row, 'train_time', 1)}" for s, row in zip(settings, rows)]
    return "\n".join(lines)


def compare(sweep_dir: str | Path, out_dir: str | Path, band: str = "std") -> FigureWriter:
    """Read the sweep, pool the seeds, draw every figure and write comparison.csv into ``out_dir``."""
    require(band in BANDS, "band", band, " or ".join(BANDS))
    groups = group_runs(read_runs(sweep_dir))
    out = FigureWriter(out_dir, tensorboard=True)
    out.save(plot_metric(groups, "train_loss", "training loss", band, log=True), "train_loss")
    if all(len(group.curves("train_acc")[0]) for group in groups):
        out.save(plot_error(groups, band), "error")
    if held_out(groups):
        out.save(plot_metric(groups, "val_acc", "val accuracy", band), "val_accuracy")
    else:
        print("no val accuracy: the runs held no images out (data.val_split=0); the accuracy figures show test "
              "accuracy")
    out.save(plot_grad_norms(groups, band), "grad_norm")
    out.save(plot_final_accuracy(groups, band), "final_accuracy")
    curves = lr_curves(groups)
    if curves:
        out.save(plot_lr_sensitivity(curves, band, "best_val_acc" if held_out(groups) else "test_acc"),
                 "lr_sensitivity")
    if schedules_differ(groups) and held_out(groups):
        out.save(plot_schedules(groups, band), "lr_schedules")
    rows = comparison_rows(groups)
    out.add(write_csv(rows, Path(out_dir) / "comparison.csv"))
    print(table(groups, rows))
    study = optuna_study.load_study(sweep_dir)
    if study is not None:
        out.save(optuna_study.history_figure(study), "optuna_history")
        importance = optuna_study.importance_figure(study)
        if importance is not None:
            out.save(importance, "optuna_importance")
        out.add(optuna_study.write_trials(study, Path(out_dir) / "optuna_trials.csv"))
        print(optuna_study.describe(study))
    return out


@command("compare", validate_config=False)
def main(cfg: DictConfig) -> None:
    print(compare(cfg.sweep_dir, HydraConfig.get().runtime.output_dir, cfg.band).report())


if __name__ == "__main__":
    run(main)
