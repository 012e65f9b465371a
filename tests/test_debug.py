"""debug= presets: fast goes through every phase (a paused and resumed run ending where a straight one does),
overfit learns its one batch by heart, profile leaves a trace and an operator table."""
import json

import pytest
import torch

from cli.compose import train
from conftest import DATA_ROOT, compose_cfg, read_mnist_once

pytestmark = pytest.mark.needs_data
mnist_once = pytest.fixture(autouse=True, scope="module")(read_mnist_once)


def run(tmp_path, *overrides):
    summary = train(compose_cfg(*overrides, f"data.root={DATA_ROOT}", "logger.tensorboard=false", tiny=False),
                    tmp_path)
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return summary, epochs


def test_fast_checks_sanity_trains_evaluates_and_resumes_to_the_same_weights(tmp_path, caplog):
    with caplog.at_level("INFO"):
        summary, epochs = run(tmp_path / "paused", "debug=fast")
    assert "paused at step 6 (trainer.pause_at_step)" in caplog.text and "at epoch 0, step 6" in caplog.text
    assert (tmp_path / "paused" / "sanity.txt").is_file()
    assert (summary["epochs"], summary["global_step"], summary["finished"]) == (2, 16, True)
    assert [e["epoch"] for e in epochs if "val_acc" in e] == [1, 2] and summary["test_acc"] is not None
    straight, _ = run(tmp_path / "straight", "debug=fast", "trainer.pause_at_step=null")
    paused_weights, straight_weights = (torch.load(tmp_path / name / "checkpoints" / "last.pt",
                                                   weights_only=True)["model"] for name in ("paused", "straight"))
    assert all(torch.equal(paused_weights[k], straight_weights[k]) for k in straight_weights)
    assert summary["test_acc"] == straight["test_acc"]


def test_overfit_learns_its_one_batch(tmp_path):
    summary, epochs = run(tmp_path, "debug=overfit")
    assert summary["global_step"] == 100 and {e.get("lr") for e in epochs if "lr" in e} == {0.1}  # constant LR
    assert epochs[0]["train_acc"] < 0.5 and epochs[99]["train_acc"] == 1.0 and epochs[99]["train_loss"] < 0.01


def test_profile_writes_a_trace_of_its_steps_and_an_operator_table(tmp_path):
    summary, _ = run(tmp_path, "debug=profile", "trainer.device=cpu")
    assert summary["global_step"] == 12
    trace, = (tmp_path / "profile").glob("*.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    steps = {e["name"] for e in events if e.get("name", "").startswith("Profiler")}
    assert {f"ProfilerStep#{i}" for i in range(2, 12)} <= steps  # 1 skipped, 1 warm-up, 10 recorded
    assert "aten::addmm" in (tmp_path / "profile" / "ops.txt").read_text()
