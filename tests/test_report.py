"""What a person sees at the end: a run's closing block; a failed run's trace; a sweep that goes past a failed job."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA_ROOT, REPO
from cli.report import closing_block

pytestmark = pytest.mark.needs_data

TINY = ["data=mnist", f"data.root={DATA_ROOT}", "data.train_subset=256", "data.val_subset=128", "trainer.max_steps=2",
        "trainer.device=cpu", "trainer.progress_bar=false", "sanity.checks=[overfit]", "sanity.overfit_steps=5"]


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args, *TINY], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_a_sweep_reports_a_failed_job_runs_the_next_and_ends_with_a_table(tmp_path):
    """Job 0 (lr 0) fails its sanity check; job 1 still trains; the table names both; exit 1."""
    proc = train("-m", "optimizer.lr=0,0.1", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"sweep directory {tmp_path}" in proc.stdout
    failed, finished = sorted(p for p in tmp_path.iterdir() if (p / ".hydra").is_dir())
    assert json.loads((failed / "summary.json").read_text())["status"] == "failed"
    assert "failed: sanity check failed: overfit" in (failed / "train.log").read_text()
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 2
    table = proc.stdout[proc.stdout.index(f"sweep {tmp_path}: 2 jobs, 1 failed"):].splitlines()
    assert table[1].split() == ["job", "what", "varies", "best", "val", "acc", "final", "status"]
    assert table[2].startswith("0    optimizer.lr=0 ") and "failed: sanity check failed: overfit" in table[2]
    assert table[3].startswith("1    optimizer.lr=0.1 ") and table[3].endswith("finished")
    assert f"{summary['best_val_acc']:.2%}" in table[3]
    assert table[4] == f"tensorboard --logdir {tmp_path}"


def test_a_run_ends_with_where_it_went_and_a_failed_run_leaves_its_error_behind(tmp_path):
    ok = train(f"hydra.run.dir={tmp_path / 'ok'}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    block = ok.stdout[ok.stdout.index("run directory"):].splitlines()
    assert block[0].split() == ["run", "directory", str(tmp_path / "ok")]
    assert block[1].startswith(f"val acc        best {summary['best_val_acc']:.2%}, final ")
    assert block[1].endswith("(1 epoch, 2 steps)")
    assert block[2].startswith(f"test acc       {summary['test_acc']:.2%} (best.pt), ")
    assert block[3].startswith("train time") and "of training steps" in block[3]
    assert block[4] == f"tensorboard    tensorboard --logdir {tmp_path / 'ok'}"
    assert summary["status"] == "finished" and summary["wall_time"] >= summary["train_time"]

    broken = train("optimizer.lr=0", f"hydra.run.dir={tmp_path / 'broken'}")
    assert broken.returncode == 1
    assert broken.stderr.count("sanity check failed: overfit") == 1  # said once, on stderr
    assert "failed: sanity check failed: overfit" in (tmp_path / "broken" / "train.log").read_text()
    summary = json.loads((tmp_path / "broken" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("sanity check failed: overfit")


def test_a_run_that_held_no_images_out_says_so_in_its_closing_block():
    """The summary of a real paper-style run (data.val_split=0) from the results ledger."""
    summary = json.loads((REPO / "results" / "precision_ab_fp32_s0" / "summary.json").read_text())
    block = closing_block(Path("run"), summary).splitlines()
    assert block[1] == "val acc        none measured (10 epochs, 3900 steps)"
    assert block[2] == "test acc       80.64% (last weights; data.val_split=0, nothing chosen)"
