"""evaluate.py: a checkpoint scored with the config saved inside it, overrides taken from the command line,
bad input in one line."""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from cli.compose import train
from cli.errors import exit_on_user_error
from cli.evaluate import evaluate
from conftest import CONFIG_DIR, DATA_ROOT, REPO, compose_cfg
from training import checkpoint
from utils.errors import ConfigError

pytestmark = pytest.mark.needs_data
RUN = ("optimizer=sgd", "scheduler=constant", "data.train_subset=512", "data.val_subset=128", "data.test_subset=256",
       "logger=none")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 1-epoch MLP run on MNIST (256 test images)."""
    run_dir = tmp_path_factory.mktemp("run")
    train(compose_cfg(*RUN), run_dir)
    return run_dir


def evaluate_cfg(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


def test_scores_equal_the_runs_own_test_scores(run_dir, tmp_path):
    """best.pt on the test set: the same accuracy and loss as the run's summary, a confusion matrix that adds up."""
    args = [f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "trainer.device=cpu"]
    record = evaluate(evaluate_cfg(*args), args, tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert record["images"] == 256 and record["split"] == "test" and record["tta"] == "none"
    assert record["acc"] == pytest.approx(summary["test_acc"], abs=1e-12)
    assert record["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    counts = torch.tensor(record["confusion"])
    assert counts.shape == (10, 10) and int(counts.sum()) == 256 and int(counts.trace()) / 256 == record["acc"]
    assert [record["class_acc"][str(c)] for c in range(10)] == pytest.approx(
        (counts.diag() / counts.sum(1)).tolist())
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["acc"] == record["acc"] and (tmp_path / "confusion_matrix.png").stat().st_size > 10_000


def test_command_line_keys_replace_the_checkpoints(run_dir, tmp_path):
    """data/trainer keys given on the command line win over the saved config: another subset, TTA, the val split."""
    args = [f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}", "trainer.device=cpu", "data.val_subset=64",
            "trainer.tta=flip", "split=val"]
    record = evaluate(evaluate_cfg(*args), args, tmp_path)
    assert (record["images"], record["tta"], record["split"]) == (64, "flip", "val")


def test_a_checkpoint_from_before_newer_trainer_keys_is_scored_with_their_defaults(run_dir, tmp_path, caplog):
    """A checkpoint whose saved config lacks trainer keys added later (here tf32, clip.window and ema, as one
    written before they existed) scores as the run did, and the log names the keys given their defaults."""
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    trainer = state["config"]["resolved"]["trainer"]
    del trainer["tf32"], trainer["clip"]["window"], trainer["ema"]
    older = checkpoint.save({k: v for k, v in state.items() if k != "sha256"}, tmp_path / "older")
    args = [f"checkpoint={older}", "trainer.device=cpu"]
    with caplog.at_level(logging.INFO, logger="cli.evaluate"):
        record = evaluate(evaluate_cfg(*args), args, tmp_path / "eval")
    assert record["acc"] == json.loads((run_dir / "summary.json").read_text())["test_acc"]
    assert "the checkpoint's config predates trainer.tf32, trainer.clip.window, trainer.ema: their defaults apply" \
        in caplog.text


@pytest.mark.parametrize("args, message", [
    (["optimizer.lr=0.1"], "optimizer.lr=0.1 is invalid for evaluate.py: allowed checkpoint=, split= and keys of "
                           "data, model and trainer"),
    (["split=train"], "split='train' is invalid: allowed test or val"),
    (["data.val_split=0", "split=val"], "its run held no validation images (data.val_split=0): allowed test"),
])
def test_refusals_name_the_value(run_dir, tmp_path, args, message):
    args = [f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", *args]
    with pytest.raises(ConfigError) as refused:
        evaluate(evaluate_cfg(*args), args, tmp_path)
    assert message in str(refused.value)


def run_evaluate_py(*args, tmp_path):
    return subprocess.run([sys.executable, "evaluate.py", *args, f"hydra.run.dir={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "DATA_ROOT": str(DATA_ROOT)})


def test_the_command_prints_scores_and_a_class_table(run_dir, tmp_path):
    result = run_evaluate_py(f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "trainer.device=cpu",
                             tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"accuracy     {summary['test_acc']:.2%}" in result.stdout  # Hydra logs to stdout
    assert "class  images  accuracy  most often taken for" in result.stdout
    assert (tmp_path / "evaluation.json").is_file() and (tmp_path / "confusion_matrix.png").is_file()


@pytest.mark.parametrize("make_args, message", [
    (lambda tmp: [f"checkpoint={tmp / 'nothing.pt'}"], "is invalid: allowed the path of an existing checkpoint file"),
    (lambda tmp: [f"checkpoint={REPO / 'README.md'}"], "README.md is not a readable checkpoint"),
    (lambda tmp: ["trainer.tta=flip"], "checkpoint is missing: give checkpoint="),
])
def test_bad_path_or_file_is_one_line_exit_2(tmp_path, make_args, message, capsys):
    """What evaluate.py's main does with them (the real command line: the next test)."""
    args = make_args(tmp_path)
    with pytest.raises(SystemExit) as stopped, exit_on_user_error():
        evaluate(evaluate_cfg(*args), args, tmp_path / "out")
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_a_file_that_is_no_checkpoint_is_one_line_exit_2_through_the_command(tmp_path):
    result = run_evaluate_py(f"checkpoint={REPO / 'README.md'}", tmp_path=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ") and "README.md is not a readable checkpoint" in lines[0], lines[0]
    assert lines[0].endswith("; give checkpoint=<a run's checkpoints/best.pt or last.pt>") and "resume" not in lines[0]
