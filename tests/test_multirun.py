"""A real Hydra multirun: one run directory and one TensorBoard run per combination."""
import json
import subprocess
import sys

import pytest

from conftest import DATA_ROOT, REPO
from training.trainer import HPARAM_METRICS

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
    assert {"val/best_acc", "val/acc", "val/best_loss", "val/loss", "test/acc", "test/loss", "time/train_seconds",
            "time/images_per_sec"} <= set(metrics)
    # each metric column is the last point of a curve (no one-point hparam/* cards), and that point is summary.json's
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events, summary = EventAccumulator(str(runs[0] / "tb")), json.loads((runs[0] / "summary.json").read_text())
    events.Reload()
    assert not [tag for tag in events.Tags()["scalars"] if tag.startswith("hparam/")]
    for tag, key in HPARAM_METRICS.items():
        assert events.Scalars(tag)[-1].value == pytest.approx(summary[key], rel=1e-6), tag


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


def test_parallel_jobs_prefix_every_console_line_with_their_number(tmp_path):
    """Side by side (joblib), each job's console lines, a logged table's too, start with its number; its train.log
    and the sweep's own lines (the closing table) do not. Job 0 (lr 0) fails its sanity check, job 1 trains."""
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=parallel", "optimizer.lr=0,0.1", f"data.root={DATA_ROOT}",
           "data.train_subset=256", "data.val_subset=128", "trainer.max_steps=2", "trainer.device=cpu",
           "sanity.checks=[overfit]", "sanity.overfit_steps=5", f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    jobs, rest = proc.stdout.split(f"sweep {tmp_path}: 2 jobs, 1 failed")
    job_lines = [line for line in jobs.splitlines() if "[HYDRA]" not in line]  # the sweep's start: Hydra's lines
    assert job_lines and all(line.startswith(("[00] ", "[01] ")) for line in job_lines), job_lines
    zero = [line for line in job_lines if line.startswith("[00] ")]
    assert any("[cli.report][ERROR] - job failed: sanity check failed: overfit" in line for line in zero)
    assert any(line.startswith("[00] overfit  FAIL ") for line in zero)  # a row of the sanity table (one record)
    one = [line[len("[01] "):] for line in job_lines if line.startswith("[01] ")]
    block = one[one.index(f"run directory  {tmp_path / '01_optimizer.lr=0.1'}"):]
    assert [row.split()[0] for row in block] == ["run", "val", "test", "train", "tensorboard"]
    assert "[0" not in rest and rest.splitlines()[1].startswith("job  what varies")
    for job_dir in tmp_path.glob("0*"):
        assert (job_dir / "train.log").read_text().startswith("[20")  # the log file is not prefixed
