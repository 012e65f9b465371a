"""An Optuna sweep's study (``train.py -m hparams_search=...``), read back from the SQLite file in its sweep directory:
the trial history, the parameters' importance and the trial table.

Importance is Optuna's mean-decrease-impurity evaluator (a random forest fitted to the trials); its default, fANOVA,
and its importance plot do not run with this environment's scikit-learn and matplotlib, so the bars are drawn here.
"""
import csv
import logging
import warnings
from pathlib import Path

import optuna
from optuna.visualization import matplotlib as optuna_plots

from analysis.figures import plt

STORAGE_FILE = "optuna.db"  # where configs/hparams_search/optuna.yaml stores the study


def load_study(sweep_dir: str | Path) -> optuna.Study | None:
    """The study stored in ``<sweep_dir>/optuna.db``, or None when the sweep was not an Optuna sweep."""
    path = Path(sweep_dir) / STORAGE_FILE
    if not path.is_file():
        return None
    optuna.logging.set_verbosity(logging.WARNING)
    storage = f"sqlite:///{path}"
    (summary,) = optuna.get_all_study_summaries(storage)  # one study per sweep directory
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def history_figure(study: optuna.Study):
    """Each trial's objective (best val accuracy) and the best so far, by trial number."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna_plots.plot_optimization_history(study, target_name="best val accuracy")
    return ax.figure


def importance_figure(study: optuna.Study):
    """Each parameter's importance for the objective (they sum to 1), or None with fewer than two distinct
    complete trials (Optuna needs them)."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or len({tuple(sorted(t.params.items())) for t in complete}) < 2:
        return None
    importances = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0))
    names = list(importances)[::-1]  # most important on top
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance for best val accuracy (mean decrease in impurity)",
           title=f"parameter importance over {len(complete)} complete trials")
    ax.grid(alpha=0.3, axis="x")
    return fig


def write_trials(study: optuna.Study, path: Path) -> Path:
    """One row per trial: number, state, objective, parameters."""
    names = sorted({name for t in study.trials for name in t.params})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", "best_val_acc", *names])
        for t in study.trials:
            writer.writerow([t.number, t.state.name, t.value, *(t.params.get(n) for n in names)])
    return path


def describe(study: optuna.Study) -> str:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return f"study {study.study_name}: {len(study.trials)} trials, none complete"
    best = study.best_trial
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    return (f"study {study.study_name}: {len(study.trials)} trials ({len(done)} complete); best trial {best.number}: "
            f"best val accuracy {best.value:.4f} with {params}")
