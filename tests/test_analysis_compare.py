"""The sweep experiments' configs, and compare.py on a tiny real multirun (train.py -m in a subprocess)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from analysis.compare import compare, lr_curves
from analysis.runs import read_runs
from conftest import CONFIG_DIR, DATA_ROOT, REPO
from utils.errors import ConfigError


def sweep_params(experiment: str) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.model._target_ == "models.MLP" and cfg.data.source == "mnist" and cfg.trainer.epochs <= 3
    return {key: str(value).split(",") for key, value in cfg.hydra.sweeper.params.items()}


def test_sweep_experiments_name_existing_optimizers_and_an_lr_grid():
    available = {p.stem for p in (Path(CONFIG_DIR) / "optimizer").glob("*.yaml")}
    comparison = sweep_params("optimizer_comparison")
    assert set(comparison) == {"optimizer"} and len(comparison["optimizer"]) >= 5
    assert set(comparison["optimizer"]) <= available
    sensitivity = sweep_params("lr_sensitivity")
    assert set(sensitivity["optimizer"]) <= available and len(sensitivity["optimizer"]) >= 2
    lrs = [float(lr) for lr in sensitivity["optimizer.lr"]]
    assert len(lrs) >= 4 and max(lrs) / min(lrs) >= 1e3


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """experiment=lr_sensitivity cut down to 2 optimizers x 2 LRs, 1 epoch on 512 images."""
    sweep_dir = tmp_path_factory.mktemp("multirun")
    done = subprocess.run([sys.executable, "train.py", "-m", "experiment=lr_sensitivity", "optimizer=sgd,adam",
                           "optimizer.lr=0.01,0.1", "data.train_subset=512", "data.val_subset=256",
                           "data.batch_size=64", "trainer.epochs=1", "trainer.sanity=skip", "trainer.device=cpu",
                           "trainer.progress_bar=false", f"data.root={DATA_ROOT}", f"hydra.sweep.dir={sweep_dir}"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


@pytest.mark.needs_data
def test_runs_are_read_with_labels_lrs_and_gradient_norms(sweep):
    runs = read_runs(sweep)
    assert [(r.optimizer, r.lr) for r in runs] == [("sgd", 0.01), ("sgd", 0.1), ("adam", 0.01), ("adam", 0.1)]
    assert runs[0].label == "optimizer=sgd optimizer.lr=0.01"  # only what differs between the runs
    epochs, norms = runs[0].grad_norm()
    assert len(norms) == 8 and epochs[-1] == pytest.approx(1.0) and (norms > 0).all()  # 512 / 64 steps
    curves = lr_curves(runs)
    assert set(curves) == {"sgd", "adam"} and curves["sgd"][0] == [0.01, 0.1]
    assert curves["adam"][1] == [runs[2].final_acc, runs[3].final_acc]


@pytest.mark.needs_data
def test_compare_writes_every_figure(sweep, tmp_path):
    out = compare(sweep, tmp_path)
    names = {p.name for p in out.paths}
    assert names == {"train_loss.png", "test_accuracy.png", "grad_norm.png", "final_accuracy.png",
                     "lr_sensitivity.png"}
    assert all(p.stat().st_size > 10_000 for p in out.paths)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_a_directory_without_runs_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep_dir='.*' is invalid: allowed a directory whose job"):
        read_runs(tmp_path)
