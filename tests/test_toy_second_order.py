"""Newton's method and the natural gradient in the toy lab: exact on a quadratic, descending at a saddle, and the
natural-gradient step equal to the solve with an independently computed Fisher information."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from analysis.toy import functions as toy_functions
from analysis.toy.paths import optimize, paths_on, with_overrides
from optimizers import DampedNewton
from optimizers.newton import damped_newton_direction
from test_analysis_toy import toy_cfg


def newton_cfg(**values) -> dict:
    return with_overrides(OmegaConf.to_container(toy_cfg().optimizers.newton), values)


def test_newton_lands_on_the_minimum_of_a_quadratic_in_one_step():
    torch.manual_seed(0)
    m = torch.randn(5, 5, dtype=torch.float64)
    h, b = m @ m.T + 0.1 * torch.eye(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    f = lambda v: 0.5 * v @ h @ v - b @ v
    optimizer = DampedNewton([w], curvature=lambda v: torch.autograd.functional.hessian(f, v), damping=0.0)

    def closure():
        optimizer.zero_grad()
        loss = f(w)
        loss.backward()
        return loss

    optimizer.step(closure)
    torch.testing.assert_close(w.detach(), torch.linalg.solve(h, b), rtol=1e-12, atol=1e-12)
    path = optimize(toy_functions.get("ravine"), newton_cfg(damping=0.0, lr=1.0), [-2.5, 1.5], 1)
    assert path.points[1].abs().max() < 1e-15 and path.losses[1] < 1e-28


def test_at_a_saddle_the_damped_direction_descends_and_newton_reaches_a_minimum():
    saddle = toy_functions.get("saddle")
    w = torch.tensor([0.5, 0.1], dtype=torch.float64)  # curvature along w2 is 3 w2^2 - 1 < 0 here
    hessian = torch.autograd.functional.hessian(saddle.f, w)
    grad = torch.autograd.functional.jacobian(saddle.f, w)
    assert torch.linalg.eigvalsh(hessian).min() < 0
    undamped = -torch.linalg.solve(hessian, grad)  # plain Newton heads for the saddle point (0, 0)
    assert (w + undamped).norm() < w.norm()
    assert damped_newton_direction(grad, hessian, 1e-3).dot(grad) < 0
    path = optimize(saddle, newton_cfg(lr=1.0), [0.5, 0.1], 30)
    assert (path.losses[1:] <= path.losses[:-1]).all()  # the line search keeps every step downhill
    assert path.losses[-1] - saddle.f_min < 1e-12 and abs(path.points[-1, 1]) == pytest.approx(1.0, abs=1e-6)


def fisher_by_quadrature(w: torch.Tensor) -> torch.Tensor:
    """E_x[s s^T], s = grad_w log N(x; mu, sigma^2), by 40-point Gauss-Hermite quadrature with autograd scores."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)  # for the weight exp(-z^2 / 2)
    weights = torch.tensor(weights / weights.sum(), dtype=torch.float64)
    xs = w[0] + w[1].exp() * torch.tensor(nodes, dtype=torch.float64)

    def log_density(v, x):
        return -v[1] - (x - v[0]) ** 2 / (2 * (2 * v[1]).exp())

    scores = torch.stack([torch.autograd.functional.jacobian(lambda v: log_density(v, x), w) for x in xs])
    return (weights[:, None, None] * scores[:, :, None] * scores[:, None, :]).sum(0)


def test_natural_gradient_step_equals_the_exact_fisher_solve():
    fn = toy_functions.get("gaussian_fit")
    start = torch.tensor([-1.5, 1.5], dtype=torch.float64)
    fisher = fisher_by_quadrature(start)
    torch.testing.assert_close(fn.fisher(start), fisher, rtol=1e-10, atol=1e-12)
    cfg = with_overrides(OmegaConf.to_container(toy_cfg().optimizers.natural_gradient),
                         {"lr": 1.0, "line_search": False})
    path = optimize(fn, cfg, start.tolist(), 1)
    grad = torch.autograd.functional.jacobian(fn.f, start)
    torch.testing.assert_close(path.points[1] - start, -torch.linalg.solve(fisher, grad), rtol=1e-10, atol=1e-12)
    hessian = torch.autograd.functional.hessian(fn.f, start)
    assert (hessian - fisher).abs().max() > 0.1  # away from the minimum, not a Newton step


def test_natural_gradient_runs_only_where_the_function_defines_a_distribution():
    cfg = toy_cfg("only=[sgd,newton,natural_gradient]")
    optimizers = {name: OmegaConf.to_container(cfg.optimizers[name]) for name in cfg.only}
    common = OmegaConf.to_container(cfg.common)
    on_ravine = paths_on(toy_functions.get("ravine"), optimizers, dict(cfg.setups.ravine.lr), [-2.5, 1.5], 3, common)
    assert [p.optimizer for p in on_ravine] == ["sgd", "newton"]
    setup = cfg.setups.gaussian_fit
    fn = toy_functions.get("gaussian_fit")
    paths = paths_on(fn, optimizers, dict(setup.lr), list(setup.start), setup.steps, common)
    assert [p.optimizer for p in paths] == ["sgd", "newton", "natural_gradient"]
    for path in paths[1:]:
        assert path.losses[-1] - fn.f_min < 1e-12
