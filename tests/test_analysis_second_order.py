"""analysis.second_order: the exact Fisher against the Gauss-Newton products, and the tool on a tiny problem."""
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from analysis.second_order import exact_fisher, growth, make_model, second_order_report
from conftest import CONFIG_DIR, DATA_ROOT, REPO
from optimizers.hessian_free import gauss_newton_product


def test_exact_fisher_equals_the_gauss_newton_products():
    torch.manual_seed(0)
    model = make_model(6, 3, seed=0).double()
    x = torch.randn(20, 6, dtype=torch.float64)
    fisher = exact_fisher(model, x)
    product = gauss_newton_product(model, dict(model.named_parameters()), x)  # jvp/vjp, never the matrix
    for v in torch.randn(3, fisher.shape[0], dtype=torch.float64):
        torch.testing.assert_close(fisher @ v, product(v), rtol=1e-10, atol=1e-12)


def test_growth_is_the_log_log_slope():
    rows = [{"params": p, "t": 3 * p ** 2} for p in (10, 100, 1000)]
    assert growth(rows, "t") == pytest.approx(2.0)


@pytest.mark.needs_data
def test_every_method_lowers_the_loss_and_the_figures_are_written(tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("second_order", overrides=[f"data_root={DATA_ROOT}", "samples=64", "hidden_sizes=[2,4]",
                                                 "steps=3"])
    table = second_order_report(cfg, tmp_path)
    assert len(table) == 2 * 7 and {r["params"] for r in table} == {130, 250}
    for row in table:
        assert row["losses"][-1] < row["losses"][0], row["method"]
        assert row["step_seconds"] > 0
    natural = [r for r in table if r["method"] == "natural_gradient"]
    assert natural[1]["memory"] >= 250 ** 2 * 4  # it forms the P x P Fisher
    for name in ("loss_vs_iterations", "loss_vs_time", "cost_per_step"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_an_unknown_method_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "analysis.second_order", "methods=[gd,newton]",
                           f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "methods='newton' is invalid" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
