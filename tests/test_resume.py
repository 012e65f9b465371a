"""Exact resume: a 2-epoch run paused after epoch 1 and resumed ends bit for bit where the run that never
stopped ends (weights, optimizer, schedule and scaler state, counters, RNGs, metrics), for every optimizer,
every schedule, fp16 with its loss scaler, and from the periodic mid-epoch checkpoints.

A tiny MLP on 96 MNIST images (3 steps per epoch) keeps the whole matrix to seconds.
"""
import json
import math

import numpy as np
import pytest
import torch

from conftest import read_mnist_once
from cli.compose import build_trainer
from training import checkpoint

pytestmark = pytest.mark.needs_data

TINY = ("trainer.epochs=2", "data.train_subset=96", "data.batch_size=32", "data.val_subset=64",
        "model.hidden_sizes=[16]", "logger=none", "optimizer=sgd", "scheduler=constant")
OPTIMIZERS = ["sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw", "radam", "lookahead", "lbfgs"]
SCHEDULES = {  # each changes the LR within the 6 steps of the run
    "constant": (), "cosine": (), "warmup_cosine": (), "onecycle": (),
    "step": ("scheduler.step_size_epochs=1",), "multistep": (),
    "warmup_step": ("scheduler.warmup_epochs=1", "scheduler.step_size_epochs=1"),
}
CASES = {
    **{f"optimizer={name}": (f"optimizer={name}",) for name in OPTIMIZERS},
    "lookahead k=2": ("optimizer=lookahead", "optimizer.k=2"),  # a sync before and after the pause
    "lbfgs full_batch": ("optimizer=lbfgs", "trainer.closure=full_batch"),  # one step per epoch
    **{f"scheduler={name}": ("optimizer=momentum", f"scheduler={name}", *extra) for name, extra in SCHEDULES.items()},
    "fp16": ("optimizer=momentum", "trainer.precision=fp16"),
    "dropout+augmentation": ("model.dropout=0.3", "data.crop_padding=2", "optimizer=adam"),
    "autoclip": ("optimizer=momentum", "trainer.clip.mode=autoclip", "trainer.clip.percentile=25",
                 "trainer.clip.window=4"),  # the window spans the pause: the norm history must carry over
}
NOT_COMPARED = {"config", "train_seconds"}  # the resumed run's config names its resume path; wall time


mnist_once = pytest.fixture(autouse=True, scope="module")(read_mnist_once)


def assert_same(a, b, where="state"):
    """Exact equality through dicts, lists, tensors, arrays and floats (NaN equals NaN)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def make_trainer(cfg, run_dir, overrides, fp16_growth_every_step=False):
    trainer = build_trainer(cfg(*TINY, *overrides), run_dir)
    if fp16_growth_every_step:  # the scale then changes every step, so a lost scaler state shows
        trainer.precision.scaler._growth_interval = 1
    return trainer


def final_state(run_dir) -> dict:
    """The run's last checkpoint, less what may differ between a resumed run and one that never stopped."""
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    for group in state["optimizer"]["param_groups"]:
        group.pop("differentiable", None)  # a default torch's load_state_dict adds to loaded groups; inert
    return {k: v for k, v in state.items() if k not in NOT_COMPARED}


def metrics(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_time"} for line in lines]


@pytest.mark.parametrize("case", CASES)
def test_pause_after_epoch_one_then_resume_equals_two_epochs_straight(cfg, tmp_path, case):
    overrides, fp16 = CASES[case], case == "fp16"
    straight = make_trainer(cfg, tmp_path / "straight", overrides, fp16).fit()
    paused = make_trainer(cfg, tmp_path / "resumed", overrides, fp16)
    steps_per_epoch = paused.scheduler.steps_per_epoch
    assert not paused.fit(stop_after_steps=steps_per_epoch)["finished"]
    resumed = make_trainer(cfg, tmp_path / "resumed", overrides, fp16)
    resumed.resume(tmp_path / "resumed" / "checkpoints" / "last.pt")
    summary = resumed.fit()
    assert straight["global_step"] == summary["global_step"] == 2 * steps_per_epoch
    assert_same(final_state(tmp_path / "straight"), final_state(tmp_path / "resumed"))
    assert metrics(tmp_path / "straight") == metrics(tmp_path / "resumed")
    if fp16:
        assert resumed.precision.scale() != 2.0 ** 16  # the scale moved, so its state had to carry over


def test_resume_from_periodic_mid_epoch_checkpoints(cfg, tmp_path):
    """``checkpoint_every_n_steps=2`` saves at steps 2 and 4, inside epochs 1 and 2 (3 steps each); resuming from
    either in a fresh directory ends where the straight run ends: same batches, same dropout and crops."""
    overrides = ("model.dropout=0.3", "data.crop_padding=2", "optimizer=momentum", "scheduler=cosine",
                 "trainer.checkpoint_every_n_steps=2", "trainer.keep_last_k=10")
    make_trainer(cfg, tmp_path / "straight", overrides).fit()
    saved = tmp_path / "straight" / "checkpoints"
    for step, step_in_epoch in [(2, 2), (4, 1)]:
        start = saved / f"step-{step:09d}.pt"
        assert (checkpoint.load(start)["step_in_epoch"], checkpoint.load(start)["global_step"]) == (step_in_epoch, step)
        resumed_dir = tmp_path / f"from-{step}"
        trainer = make_trainer(cfg, resumed_dir, overrides)
        trainer.resume(start)
        trainer.fit()
        assert_same(final_state(tmp_path / "straight"), final_state(resumed_dir), f"from step {step}")
        assert metrics(tmp_path / "straight")[-1] == metrics(resumed_dir)[-1]
