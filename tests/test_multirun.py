"""A real Hydra multirun: one run directory and one TensorBoard run per combination."""
import json
import subprocess
import sys

import pytest

from conftest import DATA_ROOT, REPO

pytestmark = pytest.mark.needs_data


def test_multirun_gives_every_combination_its_own_run(tmp_path):
    cmd = [sys.executable, "train.py", "-m", "optimizer=sgd,adam", "optimizer.lr=0.01,0.1",
           f"data.root={DATA_ROOT}", "data.train_subset=256", "data.val_subset=128",
           "data.test_subset=128", "trainer.max_steps=2",
           "trainer.sanity=skip", "trainer.device=cpu", f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(p for p in tmp_path.iterdir() if (p / ".hydra").is_dir())
    assert len(runs) == 4
    seen = set()
    for run in runs:
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        seen.add(tuple(line for line in overrides.splitlines() if "optimizer" in line))
        assert len(list((run / "tb").glob("events.*"))) == 1
        assert json.loads((run / "summary.json").read_text())["global_step"] == 2
    assert len(seen) == 4
    hparams, metrics = hparams_of(runs[0] / "tb")
    assert list(hparams)[:2] == ["*optimizer", "*optimizer.lr"]  # the swept keys first: TensorBoard ticks those
    assert {"model.hidden_sizes", "optimizer.momentum", "scheduler.min_lr"} <= set(hparams)
    assert {f"hparam/{k}" for k in ("best_val_acc", "final_val_acc", "best_val_loss", "final_val_loss", "test_acc",
                                    "test_loss", "wall_time", "train_images_per_sec")} <= set(metrics)


def hparams_of(tb_dir):
    """(hyperparameter names in the order written, metric tags) of the HPARAMS data in a run's event file."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    names, metrics = [], []
    for event in EventFileLoader(str(next(tb_dir.glob("events.*")))).Load():
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "hparams":
                data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("experiment"):
                    names += [h.name for h in data.experiment.hparam_infos]
                    metrics += [m.name.tag for m in data.experiment.metric_infos]
    return names, metrics
