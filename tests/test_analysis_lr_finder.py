"""The LR range test on least squares, where SGD's stability limit 2/L is known, and end to end on MNIST."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from analysis.lr_finder import find_lr, lr_range_test, minimum_over_10, steepest
from conftest import CONFIG_DIR, DATA_ROOT
from optimizers import SGD
from utils.errors import ConfigError


def least_squares():
    """min_w mean (x w - y)^2: Hessian 2 X^T X / n, so full-batch SGD diverges for lr > 2/L, L its top eigenvalue."""
    torch.manual_seed(0)
    x = torch.randn(256, 8) * torch.linspace(0.5, 2.0, 8)
    y = x @ torch.randn(8, 1)
    limit = 2 / (2 * torch.linalg.eigvalsh(x.T @ x / 256).max().item())
    return nn.Linear(8, 1, bias=False), itertools.repeat((x, y)), limit


def sgd(model):
    return SGD(model.parameters(), lr=0.0)


def test_suggestion_is_below_the_stability_limit_and_the_ramp_stops_on_explosion():
    model, batches, limit = least_squares()
    before = model.weight.detach().clone()
    result = lr_range_test(model, sgd, batches, F.mse_loss, min_lr=1e-5, max_lr=10.0, num_steps=200)
    assert limit / 100 < result.suggestion < limit
    assert result.stopped_early and len(result.lrs) < 200 and result.lrs[-1] < 10.0
    assert result.smoothed[-1] > 4 * min(result.smoothed[:-1])
    assert torch.equal(model.weight, before)  # the ramp ran on a copy


def test_no_early_stop_while_the_lr_stays_stable():
    model, batches, limit = least_squares()
    result = lr_range_test(model, sgd, batches, F.mse_loss, min_lr=1e-5, max_lr=limit / 2, num_steps=100)
    assert not result.stopped_early and len(result.lrs) == 100
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs[-1] == pytest.approx(limit / 2)
    assert np.allclose(np.diff(np.log(result.lrs)), math.log(limit / 2 / 1e-5) / 99)  # exponential ramp


def test_steepest_descent_of_a_known_curve():
    lrs = list(np.logspace(-6, 1, 141))
    smoothed = [2.0 - math.tanh(math.log10(lr) + 2) for lr in lrs]  # steepest at lr = 1e-2
    assert steepest(lrs, smoothed, skip_start=10, skip_end=5) == pytest.approx(1e-2, rel=0.06)
    assert steepest(lrs[:12], smoothed[:12], skip_start=10, skip_end=5) is None
    # past its minimum at lr = 0.1 the loss climbs, then drops more steeply than before: not a suggestion
    bottom = 2.0 - math.tanh(1.0)
    chaotic = [s if lr <= 0.1 else bottom + 2 * (math.log10(lr) + 1) - (1.5 if lr > 1.0 else 0.0)
               for lr, s in zip(lrs, smoothed)]
    slope = np.gradient(chaotic)
    assert lrs[int(np.argmin(chaotic))] == pytest.approx(0.1) and slope[101:].min() < slope[:101].min()
    assert steepest(lrs, chaotic, skip_start=10, skip_end=5) == pytest.approx(1e-2, rel=0.06)


def test_minimum_over_10_of_a_known_curve():
    lrs = list(np.logspace(-6, 1, 141))
    smoothed = [(math.log10(lr) + 1) ** 2 for lr in lrs]  # minimum at lr = 0.1
    assert minimum_over_10(lrs, smoothed, skip_start=10, skip_end=5) == pytest.approx(0.01)


def test_more_smoothing_lags_and_moves_the_suggestion_to_a_larger_lr():
    model, batches, limit = least_squares()
    run = {beta: lr_range_test(model, sgd, batches, F.mse_loss, min_lr=1e-5, max_lr=10.0, num_steps=200, beta=beta)
           for beta in (0.9, 0.95, 0.98)}
    suggestions = [run[beta].suggestion for beta in (0.9, 0.95, 0.98)]
    assert suggestions == sorted(suggestions) and suggestions[0] < suggestions[2]
    assert run[0.98].rule == "steepest" and run[0.98].beta == 0.98


def lr_finder_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("lr_finder", overrides=["trainer.device=cpu", f"data.root={DATA_ROOT}", *overrides])


def test_closure_optimizers_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer._target_='optimizers.LBFGS' is invalid: allowed an opt"):
        find_lr(lr_finder_cfg("optimizer=lbfgs"), tmp_path)


@pytest.mark.needs_data
def test_lr_finder_on_mnist_writes_a_sane_suggestion(tmp_path):
    cfg = lr_finder_cfg("data.train_subset=2048", "model.hidden_sizes=[64]", "num_steps=150", "min_lr=1e-4")
    _, result = find_lr(cfg, tmp_path)
    saved = json.loads((tmp_path / "lr_finder.json").read_text())
    assert saved["suggested_lr"] == result.suggestion and 1e-3 < result.suggestion < 3.0
    assert result.stopped_early and saved["steps_run"] == len(result.lrs) < 150
    assert (tmp_path / "lr_finder.png").stat().st_size > 10_000
    assert saved["rule"] == "steepest descent of the smoothed loss against log lr, before its minimum, loss " \
                            "smoothed with beta=0.95"


@pytest.mark.needs_data
def test_smoothing_and_rule_are_configurable_and_named(tmp_path):
    cfg = lr_finder_cfg("data.train_subset=2048", "model.hidden_sizes=[64]", "num_steps=150", "min_lr=1e-4",
                        "smoothing=0.98", "suggestion=minimum_over_10")
    _, result = find_lr(cfg, tmp_path)
    saved = json.loads((tmp_path / "lr_finder.json").read_text())
    assert saved["rule"].startswith("lr of the smoothed loss's minimum / 10") and "beta=0.98" in saved["rule"]
    assert result.suggestion == pytest.approx(saved["lr_at_min_smoothed_loss"] / 10)


def test_an_unknown_rule_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"suggestion='valley' is invalid: allowed steepest or minimum_over_10"):
        find_lr(lr_finder_cfg("suggestion=valley"), tmp_path)
