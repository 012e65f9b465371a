"""Toy functions and optimizer paths: known minima, the configured Rosenbrock budgets, divergence, the figures."""
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from analysis.toy import functions as toy_functions
from analysis.toy.paths import optimize, paths_on, selected_optimizers, with_overrides
from analysis.toy.plots import animate, plot_losses, plot_paths
from conftest import CONFIG_DIR
from utils.errors import ConfigError


def toy_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("toy", overrides=list(overrides))


@pytest.mark.parametrize("fn", toy_functions.FUNCTIONS.values(), ids=lambda fn: fn.name)
def test_stated_minima_are_stationary_with_the_stated_value(fn):
    for minimum in fn.minima:
        w = torch.tensor(minimum, dtype=torch.float64, requires_grad=True)
        value = fn.f(w)
        (grad,) = torch.autograd.grad(value, w)
        assert value.item() == pytest.approx(fn.f_min, abs=1e-9)
        assert grad.abs().max() < 1e-4


def test_overrides_reach_lookaheads_base_and_drop_the_group_policy():
    cfg = OmegaConf.to_container(toy_cfg().optimizers.lookahead)
    out = with_overrides(cfg, {"lr": 0.5, "weight_decay": 0.0, "max_iter": 1})
    assert out["base"]["lr"] == 0.5 and out["base"]["weight_decay"] == 0.0
    assert "decay_norm_and_bias" not in out and "max_iter" not in out and "lr" not in out


# Within the configured budget (2000 steps) these reach (1, 1) from (-1.5, 2); L-BFGS within 100 steps.
REACH = {"momentum": 1e-3, "nesterov": 1e-3, "adam": 1e-3, "sgd": 2e-2, "lookahead": 2e-2}


def test_rosenbrock_paths_end_near_the_minimum_within_the_configured_steps():
    cfg = toy_cfg()
    setup, fn = cfg.setups.rosenbrock, toy_functions.get("rosenbrock")
    assert setup.steps == 2000
    optimizers = {name: c for name, c in selected_optimizers(cfg).items() if name in REACH}
    paths = paths_on(fn, optimizers, dict(setup.lr), list(setup.start), setup.steps,
                     OmegaConf.to_container(cfg.common))
    for path in paths:
        distance = (path.points[-1] - torch.tensor([1.0, 1.0], dtype=torch.float64)).norm()
        assert not path.diverged and distance < REACH[path.optimizer], path.optimizer
        assert path.losses[-1] < 1e-2 * path.losses[0]
    lbfgs = with_overrides(OmegaConf.to_container(cfg.optimizers.lbfgs), {**cfg.common, "lr": setup.lr.lbfgs})
    path = optimize(fn, lbfgs, list(setup.start), 100, "lbfgs")
    assert (path.points[-1] - torch.tensor([1.0, 1.0], dtype=torch.float64)).norm() < 1e-4


def test_sgd_past_the_stability_limit_diverges_and_stops_early():
    cfg = OmegaConf.to_container(toy_cfg().optimizers.sgd)
    ravine = toy_functions.get("ravine")  # curvature 20 along w2: SGD is stable only for lr < 2/20
    stable = optimize(ravine, with_overrides(cfg, {"lr": 0.09, "weight_decay": 0.0}), [-2.5, 1.5], 300)
    unstable = optimize(ravine, with_overrides(cfg, {"lr": 0.11, "weight_decay": 0.0}), [-2.5, 1.5], 300)
    assert not stable.diverged and stable.losses[-1] < 1e-10
    assert unstable.diverged and len(unstable.points) < 301


def test_on_the_saddle_plain_sgd_lingers_while_adam_escapes():
    cfg = toy_cfg("only=[sgd,adam]")
    setup, fn = cfg.setups.saddle, toy_functions.get("saddle")
    sgd, adam = paths_on(fn, selected_optimizers(cfg), dict(setup.lr), list(setup.start), setup.steps,
                         OmegaConf.to_container(cfg.common))
    assert sgd.losses[-1] - fn.f_min > 0.2  # still by the saddle, f = 0
    assert adam.losses[-1] - fn.f_min < 1e-6 and abs(adam.points[-1, 1]) == pytest.approx(1.0, abs=1e-3)


def test_unknown_names_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"only='nope' is invalid: allowed names among sgd, "):
        selected_optimizers(toy_cfg("only=[sgd,nope]"))
    with pytest.raises(ConfigError, match=r"functions='booth' is invalid: allowed one of rosenbrock, "):
        toy_functions.get("booth")


def test_figures_and_gif_are_written(tmp_path):
    cfg = toy_cfg("only=[sgd,adam]")
    fn, setup = toy_functions.get("himmelblau"), cfg.setups.himmelblau
    paths = paths_on(fn, selected_optimizers(cfg), dict(setup.lr), list(setup.start), 20,
                     OmegaConf.to_container(cfg.common))
    plot_paths(fn, paths).savefig(tmp_path / "paths.png")
    plot_losses(fn, paths).savefig(tmp_path / "loss.png")
    gif = animate(fn, paths, tmp_path / "paths.gif", frames=4)
    assert (tmp_path / "paths.png").stat().st_size > 10_000 and (tmp_path / "loss.png").stat().st_size > 10_000
    assert gif.read_bytes()[:6] == b"GIF89a"
