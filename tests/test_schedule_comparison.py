"""experiment=schedule_comparison: its five schedules compose, and a cut-down real sweep is drawn by
analysis.compare with each run's LR curve beside its accuracy."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from analysis.compare import compare
from analysis.runs import read_runs
from conftest import CONFIG_DIR, DATA_ROOT, REPO

SCHEDULES = ["constant", "step", "cosine", "warmup_cosine", "onecycle"]


def test_each_schedule_option_picks_its_scheduler_fitted_to_the_run():
    targets = {}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        sweep = compose("train", overrides=["experiment=schedule_comparison"], return_hydra_config=True)
        assert sweep.hydra.sweeper.params["+schedule"].split(",") == SCHEDULES
        for name in SCHEDULES:
            cfg = compose("train", overrides=["experiment=schedule_comparison", f"+schedule={name}"])
            assert cfg.model._target_ == "models.CNN" and cfg.data.source == "mnist"
            targets[name] = cfg.scheduler._target_.rsplit(".", 1)[-1]
            if name == "step":
                assert cfg.scheduler.step_size_epochs < cfg.trainer.epochs  # it does decay within the run
            if name == "warmup_cosine":
                assert 0 < cfg.scheduler.warmup_epochs < cfg.trainer.epochs
    assert targets == {"constant": "ConstantSchedule", "step": "StepSchedule", "cosine": "CosineSchedule",
                       "warmup_cosine": "CosineSchedule", "onecycle": "OneCycleSchedule"}


@pytest.mark.needs_data
def test_compare_draws_the_lr_curves_beside_the_accuracy(tmp_path):
    sweep_dir = tmp_path / "multirun"
    done = subprocess.run([sys.executable, "train.py", "-m", "experiment=schedule_comparison",
                           "+schedule=constant,onecycle", "data.train_subset=640", "data.val_subset=256",
                           "data.test_subset=256", "data.batch_size=64", "trainer.epochs=2", "trainer.sanity=skip",
                           "trainer.device=cpu",
                           "logger.log_every_n_steps=1", "trainer.progress_bar=false", f"data.root={DATA_ROOT}",
                           f"hydra.sweep.dir={sweep_dir}"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    constant, onecycle = read_runs(sweep_dir)
    assert constant.label == "+schedule=constant"
    _, flat = constant.step_scalars("lr")
    epochs, cycle = onecycle.step_scalars("lr")
    assert len(cycle) == 20 and epochs[-1] == pytest.approx(2.0)  # 2 epochs of 10 steps, every step logged
    assert np.allclose(flat, 0.1)
    peak = int(cycle.argmax())
    assert 0 < peak < 19 and cycle.max() == pytest.approx(0.1, rel=0.05) and cycle[-1] < 1e-3 * cycle.max()
    out = compare(sweep_dir, tmp_path / "compare")
    assert (tmp_path / "compare" / "lr_schedules.png").stat().st_size > 10_000
    assert "lr_schedules.png" in {p.name for p in out.paths}
