"""The gradient-flow figure: per-layer gradient norms against depth, from the monitor's ``grad_norms.jsonl``.

    python -m analysis.gradient_flow dir=<run dir or multirun dir> [out=figure.png]

A run directory gives one line per observed step, coloured by step. A multirun directory gives
one line per run, at its first observed step (initialisation) and its last, labelled by the overrides that
differ between the runs. Depth is the index of the weight layers (Linear, Conv); BatchNorm and other
layers are left out when a model has weight layers, since their gradients are not on the same scale.
It prints, per run, the first and last weight layer's gradient norms at the first step and their ratio.
Hydra experiments draw it at the end of each job and of the sweep with ``GradientFlowFigure``, a callback.
"""
import itertools
import textwrap
from pathlib import Path

import numpy as np
from hydra.experimental.callback import Callback
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig, OmegaConf

from analysis.figures import FigureWriter, plt
from analysis.runs import find_jobs, labels
from cli.entry import command, run
from training.monitor import HISTORY_FILE, GradientHistory, read_history

FIGURE = "gradient_flow"


def weight_layers(history: GradientHistory) -> list[int]:
    """Indices of the Linear/Conv layers, Float32Linear heads included (every layer when there are none)."""
    found = [i for i, kind in enumerate(history.kinds) if kind.endswith("Linear") or kind.startswith("Conv")]
    return found or list(range(len(history.layers)))


def grad_matrix(history: GradientHistory) -> np.ndarray:
    """(steps, weight layers) gradient norms."""
    return np.asarray(history.grad_norms, dtype=float)[:, weight_layers(history)]


def find_runs(directory: Path) -> dict[str, Path]:
    """{label: run dir}: ``directory`` itself if it holds a history, else the sweep's jobs that do (found and
    labelled by analysis/runs.py, as the other tools read sweeps)."""
    if (directory / HISTORY_FILE).is_file():
        return {directory.name: directory}
    jobs = find_jobs(directory, HISTORY_FILE)
    if not jobs:
        raise FileNotFoundError(f"no {HISTORY_FILE} in {directory} or below it: train with "
                                f"monitor.every_n_steps > 0 first")
    return dict(zip(labels(jobs), jobs))


def plot_run(history: GradientHistory, title: str):
    grads = grad_matrix(history)
    figure, ax = plt.subplots(figsize=(8, 4.5))
    colour = ScalarMappable(Normalize(history.steps[0], max(history.steps[-1], history.steps[0] + 1)), "viridis")
    for step, row in zip(history.steps, grads):
        ax.semilogy(np.arange(1, row.size + 1), row, color=colour.to_rgba(step), marker=".", lw=1)
    _decorate(ax, title)
    figure.colorbar(colour, ax=ax, label="step")
    return figure


def plot_sweep(histories: dict[str, GradientHistory], title: str):
    figure, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    colours = (plt.cm.tab10 if len(histories) <= 10 else plt.cm.tab20).colors
    for (label, history), colour in zip(histories.items(), itertools.cycle(colours)):
        grads = grad_matrix(history)
        depth = np.arange(1, grads.shape[1] + 1)
        axes[0].semilogy(depth, grads[0], color=colour, marker=".", lw=1, label=label)
        axes[1].semilogy(depth, grads[-1], color=colour, marker=".", lw=1)
    _decorate(axes[0], f"{title}: first observed step")
    _decorate(axes[1], f"{title}: last observed step")
    figure.tight_layout()
    figure.legend(loc="upper center", ncol=2, fontsize=7, bbox_to_anchor=(0.5, 0.0))  # below the axes
    return figure


def _decorate(ax, title: str) -> None:
    ax.set(xlabel="weight layer (input -> output)", ylabel="gradient norm ||g||", title=title)
    ax.grid(True, which="major", alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def first_layer_table(histories: dict[str, GradientHistory]) -> str:
    """At the first observed step: each run's first and last weight layer's gradient norm and their ratio."""
    width = max(map(len, histories))
    rows = [f"{'run':{width}s}  {'first layer':>11s}  {'last layer':>11s}  {'last/first':>10s}"]
    for label, history in histories.items():
        first, last = grad_matrix(history)[0, [0, -1]]
        rows.append(f"{label:{width}s}  {first:11.3e}  {last:11.3e}  {last / first if first else np.inf:10.3e}")
    return "\n".join(rows)


def draw(directory: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``directory``'s figure (a run or a sweep) into ``out`` (default: <directory>/gradient_flow.png)."""
    directory = Path(directory)
    histories = {label: read_history(run / HISTORY_FILE) for label, run in find_runs(directory).items()}
    sweep = not (directory / HISTORY_FILE).is_file()
    figure = (plot_sweep if sweep else plot_run)(histories if sweep else next(iter(histories.values())),
                                                 figure_title(directory, sweep))
    out = Path(out) if out else directory / f"{FIGURE}.png"
    path = FigureWriter(out.parent).save(figure, out.stem)
    print(first_layer_table(histories))
    return path


def figure_title(directory: Path, sweep: bool) -> str:
    """What ran, from Hydra's record of it: the experiment, or the model and optimizer (a run adds its name, the
    varied settings in a sweep's job), wrapped to fit; the folder name when there is no record."""
    record = directory / ("multirun.yaml" if sweep else ".hydra/hydra.yaml")
    if not record.is_file():
        return directory.name
    choices = OmegaConf.load(record).hydra.runtime.choices
    what = choices.get("experiment") or f"{choices.get('model')}, {choices.get('optimizer')}"
    return textwrap.fill(what if sweep else f"{what}: {directory.name}", 70)


class GradientFlowFigure(Callback):
    """Hydra callback (``hydra.callbacks``): the figure in each job's run directory, and in the sweep directory."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        run_dir = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
        if (run_dir / HISTORY_FILE).is_file():
            draw(run_dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        draw(config.hydra.sweep.dir)


@command("gradient_flow", validate_config=False)
def main(cfg: DictConfig) -> None:
    print(f"wrote {draw(cfg.dir, cfg.out)}")


if __name__ == "__main__":
    run(main)
