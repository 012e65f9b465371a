"""Every optimizer reaches the minimum (1, 1) of the 2-D Rosenbrock function from (-1.5, 2.0).

f(x, y) = (1 - x)^2 + 100 (y - x^2)^2: a curved, narrow valley (Hessian condition number ~2500 at the minimum).
Each case states its step size, its budget of `step()` calls and the tolerance on max|w - (1, 1)|; budgets are
~10-30% above the step at which the case first gets there (float64, deterministic). The gradient is the analytic
one (checked against autograd), which keeps 30k steps under a few seconds.
"""

import functools

import pytest
import torch

from optimizers.adagrad import Adagrad
from optimizers.adam import Adam, AdamW
from optimizers.lbfgs import LBFGS
from optimizers.lookahead import Lookahead
from optimizers.radam import RAdam
from optimizers.rmsprop import RMSprop
from optimizers.sgd import SGD

torch.set_num_threads(2)

START = (-1.5, 2.0)

# name: (optimizer factory over [w], max step() calls, tolerance on max|w - 1|)
CASES = {
    "sgd": (lambda p: SGD(p, lr=1.9e-3), 10_000, 1e-3),  # lr just under 2 / lambda_max(H(1, 1)) ~ 2.0e-3
    "momentum": (lambda p: SGD(p, lr=1e-3, momentum=0.9), 2_000, 1e-3),
    "nesterov": (lambda p: SGD(p, lr=1e-3, momentum=0.9, nesterov=True), 2_000, 1e-3),
    "rmsprop": (lambda p: RMSprop(p, lr=1e-4, momentum=0.95), 3_000, 1e-3),
    "rmsprop_centered": (lambda p: RMSprop(p, lr=3e-4, momentum=0.9, centered=True), 2_000, 1e-3),
    "adagrad": (lambda p: Adagrad(p, lr=1.5), 11_000, 1e-3),
    "adam": (lambda p: Adam(p, lr=0.02), 3_000, 1e-3),
    "adamw": (lambda p: AdamW(p, lr=0.02, weight_decay=1e-4), 3_000, 1e-3),
    "radam": (lambda p: RAdam(p, lr=5e-3, betas=(0.9, 0.99)), 2_500, 1e-3),
    "lookahead_sgd": (lambda p: Lookahead(p, base=functools.partial(SGD, lr=1.5e-3, momentum=0.9)), 3_000, 1e-3),
    "lbfgs_strong_wolfe": (lambda p: LBFGS(p, line_search_fn="strong_wolfe"), 3, 1e-5),
    "lbfgs": (lambda p: LBFGS(p, lr=0.1), 20, 1e-3),  # fixed steps of lr: 20 inner iterations per call
}


def rosenbrock(x: float, y: float) -> tuple[float, list[float]]:
    """f(x, y) and its gradient."""
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2, [-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)]


def closure_for(w: torch.nn.Parameter):
    def closure() -> torch.Tensor:
        loss, grad = rosenbrock(*w.tolist())
        w.grad = torch.tensor(grad, dtype=w.dtype)
        return torch.tensor(loss, dtype=w.dtype)
    return closure


def test_analytic_gradient_matches_autograd():
    w = torch.tensor(START, dtype=torch.float64, requires_grad=True)
    ((1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2).backward()
    assert w.grad.tolist() == pytest.approx(rosenbrock(*START)[1], rel=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_reaches_minimum(name):
    make, max_steps, tol = CASES[name]
    w = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
    optimizer, closure = make([w]), closure_for(w)
    for steps in range(1, max_steps + 1):
        optimizer.step(closure)
        if (w.detach() - 1).abs().max() < tol:
            break
    error = (w.detach() - 1).abs().max().item()
    assert error < tol, f"{name}: |w - (1, 1)| = {error:.2e} after {steps} steps (tolerance {tol:g})"
