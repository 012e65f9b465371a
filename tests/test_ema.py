"""Weight EMA (training/ema.py): the decay warm-up formulas against an independent float64 recurrence, an EMA of
unchanging weights equals them, lookahead resets the weights, BN buffers are averaged, a run with an EMA writes
val_ema/* and resumes bit for bit through real processes, and a bad decay is one line with exit 2."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli.compose import train
from conftest import DATA_ROOT, REPO
from test_errors import assert_one_line_error
from test_resume import assert_same, final_state, metrics
from training.ema import WeightEMA


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()


def tensors(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach() for t in (*model.parameters(), *model.buffers())]


def reference_decay(warmup: str, decay: float, n: int, step: int, total: int) -> float:
    return {"ramp": min(decay, (1 + n) / (10 + n)), "cubic": decay * (step / total) ** 3, "none": decay}[warmup]


@pytest.mark.parametrize("warmup", ["ramp", "cubic", "none"])
@pytest.mark.parametrize("every", [1, 3])
def test_ema_follows_its_warmup_formula_on_weights_and_bn_buffers(warmup, every):
    """Weights and running statistics set to w_t = w_0 + t v (v random) after each step t; the EMA must equal
    e <- d e + (1 - d) w_t at every ``every``-th step, d from the formula, starting from e = w_0."""
    model, total = net(), 12
    start = [t.clone() for t in tensors(model)]
    moves = [torch.randn_like(t) if t.is_floating_point() else torch.ones_like(t) for t in start]
    ema = WeightEMA(model, decay=0.8, every=every, warmup=warmup, total_steps=total)
    expected, n = [t.clone() for t in start], 0
    for step in range(1, total + 1):
        with torch.no_grad():
            for t, t0, v in zip(tensors(model), start, moves):
                t.copy_(t0 + step * v)  # num_batches_tracked (an integer buffer) moves too: it is copied
        ema.step(model, step)
        if step % every == 0:
            d = reference_decay(warmup, 0.8, n, step, total)
            expected = [e * d + (1 - d) * (t0 + step * v) if e.is_floating_point() else t0 + step * v
                        for e, t0, v in zip(expected, start, moves)]
            n += 1
        for got, want in zip(tensors(ema.module), expected):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert ema.updates == n == total // every


def test_decay_warmup_values():
    ema = WeightEMA(net(), decay=0.99, warmup="ramp", total_steps=100)
    assert [ema.decay_at(n, 0) for n in (0, 1, 8, 989, 2000)] == [0.1, 2 / 11, 0.5, 0.99, 0.99]
    cubic = WeightEMA(net(), decay=0.95 ** 5, warmup="cubic", total_steps=200)
    assert cubic.decay_at(7, 100) == pytest.approx(0.95 ** 5 / 8) and cubic.decay_at(0, 200) == 0.95 ** 5


@pytest.mark.parametrize("warmup", ["ramp", "cubic", "none"])
def test_ema_of_unchanging_weights_equals_them_exactly(warmup):
    model = net()
    ema = WeightEMA(model, decay=0.999, warmup=warmup, total_steps=50)
    for step in range(1, 51):
        ema.step(model, step)
    assert ema.updates == 50
    for got, want in zip(tensors(ema.module), tensors(model)):
        assert torch.equal(got, want)


def test_lookahead_resets_the_weights_to_the_ema_after_each_update_and_at_the_end():
    model, total = net(), 7
    ema = WeightEMA(model, decay=0.5, every=3, warmup="none", lookahead=True, total_steps=total)
    for step in range(1, total + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # a "step" of the fast weights
        before = [t.clone() for t in tensors(model)]
        ema.step(model, step)
        synced = step % 3 == 0 or step == total
        for fast, slow, old in zip(tensors(model), tensors(ema.module), before):
            assert torch.equal(fast, slow) if synced else torch.equal(fast, old)
    assert ema.updates == 2  # steps 3 and 6; step 7 (the last) only copies the EMA back


def test_constructor_refuses_a_decay_outside_the_open_unit_interval():
    with pytest.raises(ValueError, match="decay=1.0: must be in"):
        WeightEMA(net(), decay=1.0, total_steps=1)


# ------------------------------------------------------------------------------------------- through train.py
RUN = ("trainer.device=cpu", "trainer.sanity=skip", "trainer.progress_bar=false", "optimizer=momentum",
       "scheduler=cosine", f"data.root={DATA_ROOT}", "data.train_subset=512", "data.val_subset=256",
       "data.test_subset=256", "data.batch_size=32", "model.batch_norm=true", "model.hidden_sizes=[32]",
       "trainer.epochs=2", "trainer.checkpoint_every_n_steps=1", "trainer.resume=auto", "trainer.ema.decay=0.9",
       "trainer.ema.every=2", "trainer.ema.warmup=cubic", "trainer.ema.lookahead=true")


def start(run_dir, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", *RUN, *extra, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.needs_data
def test_run_with_ema_stopped_and_resumed_in_new_processes_equals_an_uninterrupted_one(tmp_path):
    """SIGTERM a real run (BN MLP on MNIST, EMA with lookahead every 2 steps) once it has a mid-epoch checkpoint,
    resume it in a new process: the checkpoint (weights, EMA, optimizer, ...) and metrics equal the reference's."""
    reference, stopped = start(tmp_path / "reference"), start(tmp_path / "stopped")
    last = tmp_path / "stopped" / "checkpoints" / "last.pt"
    while not last.exists() and stopped.poll() is None:
        time.sleep(0.01)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=240)
    assert stopped.returncode == 128 + signal.SIGTERM, err
    resumed = start(tmp_path / "stopped")
    assert resumed.wait(timeout=240) == 0, resumed.stderr.read()
    assert reference.wait(timeout=240) == 0, reference.stderr.read()
    saved = final_state(tmp_path / "reference")
    assert saved["ema"] is not None and int(saved["ema"]["n_averaged"]) == 1 + 2 * 16 // 2
    assert_same(saved, final_state(tmp_path / "stopped"))
    assert metrics(tmp_path / "reference") == metrics(tmp_path / "stopped")
    records = metrics(tmp_path / "reference")
    assert all("val_ema_acc" in r for r in records[:2])
    assert "test_acc_ema" not in records[-1]  # with lookahead the last weights are the EMA's: scored once
    events = EventAccumulator(str(tmp_path / "reference" / "tb")).Reload()
    assert [e.step for e in events.Scalars("val_ema/acc")] == [e.step for e in events.Scalars("val/acc")]
    assert len(events.Scalars("val_ema/acc")) == 2


@pytest.mark.needs_data
def test_without_lookahead_the_ema_is_scored_on_val_and_test_beside_the_trained_weights(cfg, tmp_path):
    summary = train(cfg("model.hidden_sizes=[32]", "trainer.ema.decay=0.9", "logger=none"), tmp_path)
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()[:1]]
    assert 0.5 < record["val_ema_acc"] <= 1 and record["val_ema_loss"] != record["val_loss"]
    assert 0.5 < summary["test_acc_ema"] <= 1 and summary["test_loss_ema"] != summary["test_loss_last"]


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_a_decay_outside_0_1_is_one_line_exit_2(tmp_path, value):
    result = subprocess.run([sys.executable, "train.py", *RUN, f"trainer.ema.decay={value}",
                             f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert_one_line_error(result, f"trainer.ema.decay={value} is invalid: allowed a number in [0, 1) or null")
    assert not (tmp_path / "checkpoints").exists()
