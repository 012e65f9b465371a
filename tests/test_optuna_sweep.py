"""hparams_search=optuna: a real Optuna study (TPE, SQLite in the sweep directory) on a tiny MNIST subset, 3 trials,
continued to 5 by the same command; analysis.compare reads it back."""
import csv
import json
import os
import subprocess
import sys

import optuna
import pytest
from omegaconf import OmegaConf

from analysis.compare import compare
from conftest import DATA_ROOT, REPO

pytestmark = pytest.mark.needs_data

TINY = ["data.train_subset=512", "data.val_subset=256", "data.test_subset=256", "data.batch_size=64",
        "trainer.epochs=2", "trainer.sanity=skip", "trainer.device=cpu", "trainer.progress_bar=false",
        "model.hidden_sizes=[32]", f"data.root={DATA_ROOT}"]


def search(sweep_dir, n_trials: int) -> None:
    done = subprocess.run([sys.executable, "train.py", "-m", "hparams_search=optuna", *TINY,
                           f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweep.dir={sweep_dir}"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_study_continues_to_more_trials_and_maximises_best_val_acc(tmp_path):
    sweep_dir = tmp_path / "optuna"
    search(sweep_dir, 3)
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    assert len(optuna.load_study(study_name="mlp_mnist", storage=storage).trials) == 3
    search(sweep_dir, 5)  # the same command, more trials: two more in the same study
    study = optuna.load_study(study_name="mlp_mnist", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 5
    assert len({t.params["optimizer.lr"] for t in study.trials}) == 5  # the continuation proposes new points
    summaries = {int(d.name): json.loads((d / "summary.json").read_text()) for d in sweep_dir.iterdir()
                 if (d / "summary.json").is_file()}
    assert sorted(summaries) == [0, 1, 2, 3, 4]  # one job directory per trial, none written twice
    for trial in study.trials:
        assert trial.value == summaries[trial.number]["best_val_acc"]  # the objective: val, never test
        config = OmegaConf.load(sweep_dir / str(trial.number) / ".hydra" / "config.yaml")
        assert config.optimizer.lr == trial.params["optimizer.lr"]
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == max(s["best_val_acc"] for s in summaries.values()) == study.best_value

    out = compare(sweep_dir, tmp_path / "compare")
    assert {"optuna_history.png", "optuna_importance.png", "optuna_trials.csv"} <= {p.name for p in out.paths}
    with open(tmp_path / "compare" / "optuna_trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3, 4]
    assert [float(r["best_val_acc"]) for r in rows] == [t.value for t in study.trials]
