"""The sweep experiments' configs; compare.py on a hand-made sweep with known numbers (seeds pooled) and on a tiny
real multirun (train.py -m in a subprocess)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir

from analysis.compare import compare, lr_curves, plot_error
from analysis.runs import group_runs, read_runs
from conftest import CONFIG_DIR, DATA_ROOT, REPO
from utils.errors import ConfigError


def sweep_params(experiment: str) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.model._target_ == "models.MLP" and cfg.data.source == "mnist" and cfg.trainer.epochs <= 3
    return {key: str(value).split(",") for key, value in cfg.hydra.sweeper.params.items()}


# The hand-made sweep: (optimizer, lr, seed) -> (best_val_acc, test_acc, train_time). sgd at lr 0.1 has three
# seeds, adam two seeds at each of two LRs. Each job's whole wall time is 5 s more than its train_time.
HAND_MADE = {("sgd", 0.1, 0): (0.90, 0.89, 10.0), ("sgd", 0.1, 1): (0.92, 0.91, 12.0),
             ("sgd", 0.1, 2): (0.94, 0.90, 14.0),
             ("adam", 0.01, 0): (0.95, 0.94, 20.0), ("adam", 0.01, 1): (0.97, 0.96, 22.0),
             ("adam", 0.001, 0): (0.80, 0.79, 20.0), ("adam", 0.001, 1): (0.84, 0.83, 22.0)}
OLD_NAMES = ("sgd", 2)  # its summary.json has the names of before train_time: wall_time (the training steps' time)


def write_job(directory: Path, optimizer: str, lr: float, seed: int, scores) -> None:
    """A job directory as train.py -m leaves it: .hydra/{overrides,config}.yaml, metrics.jsonl, summary.json."""
    (directory / ".hydra").mkdir(parents=True)
    overrides = [f"optimizer={optimizer}", f"optimizer.lr={lr}", f"trainer.seed={seed}", "data.root=/elsewhere"]
    (directory / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"optimizer": {"_target_": f"optimizers.{optimizer.title()}", "lr": lr}, "trainer": {"seed": seed}}
    (directory / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    best, test, seconds = scores
    epochs = [{"epoch": e, "train_loss": 1 / e + seed, "val_acc": best - 0.1 / e, "grad_norm": e + seed}
              for e in (1, 2, 3)]
    lines = [json.dumps(r) for r in epochs] + [json.dumps({"epoch": 3, "test_acc": test})]
    (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    times = ({"wall_time": seconds, "process_time": seconds + 5} if (optimizer, seed) == OLD_NAMES  # before train_time
             else {"train_time": seconds, "wall_time": seconds + 5})
    (directory / "summary.json").write_text(json.dumps({"best_val_acc": best, "test_acc": test, **times}))


@pytest.fixture
def hand_made(tmp_path) -> Path:
    for num, ((optimizer, lr, seed), scores) in enumerate(HAND_MADE.items()):
        write_job(tmp_path / "sweep" / f"{num}_optimizer={optimizer},trainer.seed={seed}", optimizer, lr, seed, scores)
    return tmp_path / "sweep"


def test_seeds_are_pooled_and_nothing_is_overwritten(hand_made):
    groups = group_runs(read_runs(hand_made))
    assert [(g.label, g.n) for g in groups] == [("optimizer.lr=0.1 optimizer=sgd", 3),
                                                ("optimizer.lr=0.01 optimizer=adam", 2),
                                                ("optimizer.lr=0.001 optimizer=adam", 2)]
    assert sorted(r.seed for g in groups for r in g.runs) == [0, 0, 0, 1, 1, 1, 2]  # every run in one group
    assert [(r.score("train_time"), r.score("wall_time")) for r in groups[0].runs] == [(10, 15), (12, 17), (14, 19)]
    epochs, values = groups[0].curves("train_loss")
    assert epochs.tolist() == [1, 2, 3] and values.shape == (3, 3)
    curves = lr_curves(groups)
    assert list(curves) == ["Adam"] and [g.lr for g in curves["Adam"]] == [0.001, 0.01]  # one series: its optimizer


def test_comparison_csv_has_n_mean_and_sample_std_per_group(hand_made, tmp_path):
    out = compare(hand_made, tmp_path / "out", band="ci95")
    assert {p.name for p in out.paths} == {"train_loss.png", "val_accuracy.png", "grad_norm.png",
                                           "final_accuracy.png", "lr_sensitivity.png", "comparison.csv"}
    with open(tmp_path / "out" / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["optimizer"], r["optimizer.lr"], r["n"], r["seeds"]) for r in rows] == [
        ("sgd", "0.1", "3", "0 1 2"), ("adam", "0.01", "2", "0 1"), ("adam", "0.001", "2", "0 1")]
    sgd = rows[0]
    assert float(sgd["best_val_acc_mean"]) == pytest.approx(0.92)
    assert float(sgd["best_val_acc_std"]) == pytest.approx(0.02)  # sample std (n - 1) of 0.90, 0.92, 0.94
    assert float(sgd["test_acc_mean"]) == pytest.approx(0.90) and float(sgd["test_acc_std"]) == pytest.approx(0.01)
    assert float(sgd["train_time_mean"]) == pytest.approx(12.0) and float(sgd["train_time_std"]) == pytest.approx(2.0)
    assert float(rows[2]["best_val_acc_std"]) == pytest.approx(np.std([0.80, 0.84], ddof=1))


def test_runs_without_held_out_images_are_compared_on_the_test_set(hand_made, tmp_path, capsys):
    """data.val_split=0 (the paper recipes, the precision A/B): no val_* in metrics.jsonl or summary.json."""
    for job in hand_made.iterdir():
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        (job / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "val_acc"}) + "\n"
                                                   for r in rows))
        summary = json.loads((job / "summary.json").read_text())
        (job / "summary.json").write_text(json.dumps({**summary, "best_val_acc": None}))
    out = compare(hand_made, tmp_path / "out")
    assert {p.name for p in out.paths} == {"train_loss.png", "grad_norm.png", "final_accuracy.png",
                                           "lr_sensitivity.png", "comparison.csv"}
    printed = capsys.readouterr().out
    assert "no val accuracy: the runs held no images out (data.val_split=0); the accuracy figures show test" in printed
    assert "optimizer.lr=0.1 optimizer=sgd     3  -                90.00 +- 1.00" in printed


def test_the_error_figure_draws_training_and_val_error_in_percent(hand_made, tmp_path):
    """He et al.'s Fig. 6: 100 (1 - train_acc) solid, 100 (1 - val_acc) dashed, seeds pooled."""
    for job in hand_made.iterdir():
        seed = int(job.name.rsplit("=", 1)[1])
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        (job / "metrics.jsonl").write_text("".join(
            json.dumps({**r, "train_acc": 0.5 + 0.1 * r["epoch"] + 0.01 * seed} if "train_loss" in r else r) + "\n"
            for r in rows))
    sgd = group_runs(read_runs(hand_made))[0]
    train, val = plot_error([sgd], "std").axes[0].lines
    assert train.get_linestyle() == "-" and val.get_linestyle() == "--"
    assert np.allclose(train.get_ydata(), [39, 29, 19])  # 100 (0.5 - 0.1 e - 0.01 mean seed), seeds 0, 1, 2
    assert np.allclose(val.get_ydata(), [18, 13, 8 + 10 / 3])  # 100 (1 - 0.92 + 0.1 / e), best val 0.92 on average
    assert train.get_label() == "optimizer.lr=0.1 optimizer=sgd (n=3) train: 19.0%"
    assert "error.png" in {p.name for p in compare(hand_made, tmp_path / "out").paths}


def test_an_unknown_band_is_a_one_line_error(hand_made, tmp_path):
    with pytest.raises(ConfigError, match="band='sem' is invalid: allowed std or ci95"):
        compare(hand_made, tmp_path, band="sem")


def test_sweep_experiments_name_existing_optimizers_and_an_lr_grid():
    available = {p.stem for p in (Path(CONFIG_DIR) / "optimizer").glob("*.yaml")}
    comparison = sweep_params("optimizer_comparison")
    assert set(comparison) == {"optimizer", "trainer.seed"} and len(comparison["optimizer"]) >= 5
    assert set(comparison["optimizer"]) <= available
    sensitivity = sweep_params("lr_sensitivity")
    assert set(sensitivity["optimizer"]) <= available and len(sensitivity["optimizer"]) >= 2
    assert comparison["trainer.seed"] == sensitivity["trainer.seed"] == ["0", "1", "2"]  # 3 seeds by default
    lrs = [float(lr) for lr in sensitivity["optimizer.lr"]]
    assert len(lrs) >= 4 and max(lrs) / min(lrs) >= 1e3


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """experiment=lr_sensitivity cut down to sgd x 2 LRs x 2 seeds, 1 epoch on 512 images."""
    sweep_dir = tmp_path_factory.mktemp("multirun")
    done = subprocess.run([sys.executable, "train.py", "-m", "experiment=lr_sensitivity", "optimizer=sgd",
                           "optimizer.lr=0.01,0.1", "trainer.seed=0,1", "data.train_subset=512", "data.val_subset=256",
                           "data.test_subset=256",
                           "data.batch_size=64", "trainer.epochs=1", "trainer.sanity=skip", "trainer.device=cpu",
                           "trainer.progress_bar=false", f"data.root={DATA_ROOT}", f"hydra.sweep.dir={sweep_dir}"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


@pytest.mark.needs_data
def test_runs_are_read_with_labels_lrs_seeds_and_gradient_norms(sweep):
    runs = read_runs(sweep)
    assert [(r.lr, r.seed) for r in runs] == [(0.01, 0), (0.01, 1), (0.1, 0), (0.1, 1)]
    assert runs[0].label == "optimizer.lr=0.01 trainer.seed=0"  # only what differs between the runs
    epochs, norms = runs[0].grad_norm()
    assert len(norms) == 8 and epochs[-1] == pytest.approx(1.0) and (norms > 0).all()  # 512 / 64 steps
    groups = group_runs(runs)
    assert [(g.label, g.n) for g in groups] == [("optimizer.lr=0.01", 2), ("optimizer.lr=0.1", 2)]
    assert all(np.isfinite(g.scores("test_acc")).all() and np.isfinite(g.scores("best_val_acc")).all()
               for g in groups)
    assert [g.lr for g in lr_curves(groups)["sgd"]] == [0.01, 0.1]


@pytest.mark.needs_data
def test_compare_writes_every_figure(sweep, tmp_path):
    out = compare(sweep, tmp_path)
    names = {p.name for p in out.paths}
    assert names == {"train_loss.png", "val_accuracy.png", "error.png", "grad_norm.png", "final_accuracy.png",
                     "lr_sensitivity.png", "comparison.csv"}
    assert all(p.stat().st_size > 10_000 for p in out.paths if p.suffix == ".png")
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_a_directory_without_runs_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep_dir='.*' is invalid: allowed a directory whose job"):
        read_runs(tmp_path)
