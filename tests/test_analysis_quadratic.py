"""The quadratic convergence study: measured linear rates of tuned GD and heavy ball against theory, GD against
SGD on least squares, and the tool's outputs."""
import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from analysis.quadratic import (LeastSquares, error_curve, measured_rate, quadratic_report, rates_over_kappa,
                                sgd_curve, spread_quadratic, tuned)
from conftest import CONFIG_DIR
from utils.errors import ConfigError


def quadratic_cfg(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("quadratic", overrides=list(overrides))


def test_measured_rate_of_a_geometric_sequence_is_its_ratio():
    errors = 3.0 * 0.9 ** np.arange(400)
    assert measured_rate(errors, (1e-3, 1e-13)) == pytest.approx(0.9, rel=1e-12)


def test_measured_rates_are_within_5_percent_of_theory():
    cfg = quadratic_cfg("kappas=[10,100,1000]", "dim=30")
    rates = rates_over_kappa(cfg, torch.Generator().manual_seed(1))
    for method in ("gd", "heavy_ball"):
        for theory, measured in zip(rates[method]["theory"], rates[method]["measured"]):
            assert measured == pytest.approx(theory, rel=0.05)
    assert rates["heavy_ball"]["measured"][2] < rates["gd"]["measured"][1]  # momentum at kappa 1000 beats GD at 100


def test_untuned_momentum_is_slower_than_tuned():
    """The rate is a property of the tuning: heavy ball at half the tuned step size is measurably slower."""
    a = spread_quadratic(30, 1000.0, torch.Generator().manual_seed(0))
    w0 = torch.randn(30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lr, momentum, theory = tuned("heavy_ball", 1000.0)
    detuned = measured_rate(error_curve(a, w0, lr / 2, momentum, 1e-14, 200_000), (1e-3, 1e-13))
    assert detuned > theory * 1.02


def test_full_batch_gd_converges_linearly_while_sgd_stops_at_a_noise_floor():
    generator = torch.Generator().manual_seed(0)
    problem = LeastSquares.random(400, 10, 0.5, generator)
    assert problem.step_size(400) == pytest.approx(1 / problem.L)
    _, gd = sgd_curve(problem, 400, 40, 1, generator)
    _, sgd = sgd_curve(problem, 1, 40, 4, generator)
    assert gd[-1] < 1e-12 * gd[0]
    assert sgd[-1] > 1e-4 and sgd[len(sgd) // 2:].min() > 1e-4 * sgd[0]  # no further progress past the floor
    assert sgd[4] < 0.1 * sgd[0]  # but it gets there fast: a quarter of one pass cuts the gap tenfold


def test_the_tool_writes_its_figures_and_numbers(tmp_path):
    cfg = quadratic_cfg("kappas=[10,100]", "epochs=2", "batch_sizes=[10]", "least_squares.n=200")
    out, numbers = quadratic_report(cfg, tmp_path)
    for name in ("gd_vs_sgd.png", "rates.png", "rate_curves.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    saved = json.loads((tmp_path / "quadratic.json").read_text())
    assert saved["rates"]["gd"]["measured"] == numbers["rates"]["gd"]["measured"]
    assert set(saved["least_squares"]["final_gap"]) == {"10", "200"}


def test_bad_values_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"batch_sizes=\[0\] is invalid: allowed integers in \[1, "):
        quadratic_report(quadratic_cfg("batch_sizes=[0]"), tmp_path)
    with pytest.raises(ConfigError, match=r"max_steps=10 is invalid: allowed enough steps"):
        quadratic_report(quadratic_cfg("kappas=[100]", "max_steps=10", "epochs=1"), tmp_path)
