"""Two-dimensional test functions for optimizers, with their minima and a box to draw them in.

Each ``f`` takes ``w`` whose first axis holds (w1, w2): a Parameter of shape (2,) or a grid of shape (2, H, W).

    rosenbrock  (1 - w1)^2 + 100 (w2 - w1^2)^2            a curved valley; minimum 0 at (1, 1)
    beale       (1.5 - w1 + w1 w2)^2 + (2.25 - w1 + w1 w2^2)^2 + (2.625 - w1 + w1 w2^3)^2
                                                           flat plateaus, sharp walls; minimum 0 at (3, 0.5)
    ravine      w1^2 + 10 w2^2                             condition number 10; minimum 0 at (0, 0)
    saddle      w1^2 + w2^4 / 4 - w2^2 / 2                 a saddle at (0, 0) (curvatures 2 and -1) between
                                                           two minima -1/4 at (0, +-1)
    himmelblau  (w1^2 + w2 - 11)^2 + (w1 + w2^2 - 7)^2     four minima 0
    gaussian_fit  the mean negative log-likelihood of data (mean 1, variance 1/4) under N(mu, sigma^2),
                w = (mu, log sigma): log sigma + ((1 - mu)^2 + 1/4) / (2 sigma^2) + log(2 pi)/2;
                minimum at (1, log 1/2). It defines a distribution, so it has a Fisher information
                F(w) = diag(1/sigma^2, 2), which differs from the Hessian away from the minimum.

Functions that define a distribution carry ``fisher(w)`` (2 x 2), which the natural gradient needs.
"""
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from utils.errors import require


@dataclass(frozen=True)
class ToyFunction:
    name: str
    f: Callable[[Tensor], Tensor]
    minima: tuple[tuple[float, float], ...]
    f_min: float
    box: tuple[float, float, float, float]  # w1 from, w1 to, w2 from, w2 to (the plots' view)
    fisher: Callable[[Tensor], Tensor] | None = None  # w (2,) -> F(w) (2, 2), where f is a negative log-likelihood


def rosenbrock(w: Tensor) -> Tensor:
    return (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2


def beale(w: Tensor) -> Tensor:
    x, y = w[0], w[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2 + (2.625 - x + x * y ** 3) ** 2


def ravine(w: Tensor) -> Tensor:
    return w[0] ** 2 + 10 * w[1] ** 2


def saddle(w: Tensor) -> Tensor:
    return w[0] ** 2 + w[1] ** 4 / 4 - w[1] ** 2 / 2


def himmelblau(w: Tensor) -> Tensor:
    return (w[0] ** 2 + w[1] - 11) ** 2 + (w[0] + w[1] ** 2 - 7) ** 2


DATA_MEAN, DATA_VARIANCE = 1.0, 0.25  # the sample that gaussian_fit fits


def gaussian_fit(w: Tensor) -> Tensor:
    mu, log_sigma = w[0], w[1]
    return log_sigma + ((DATA_MEAN - mu) ** 2 + DATA_VARIANCE) / (2 * (2 * log_sigma).exp()) + math.log(2 * math.pi) / 2


def gaussian_fisher(w: Tensor) -> Tensor:
    """E_x[grad log p(x|w) grad log p(x|w)^T] for x ~ N(mu, sigma^2), w = (mu, log sigma): diag(1/sigma^2, 2)."""
    return torch.diag(torch.stack([(-2 * w[1]).exp(), torch.full_like(w[1], 2.0)]))


FUNCTIONS = {fn.name: fn for fn in [
    ToyFunction("rosenbrock", rosenbrock, ((1.0, 1.0),), 0.0, (-2.0, 2.0, -1.0, 3.0)),
    ToyFunction("beale", beale, ((3.0, 0.5),), 0.0, (-4.5, 4.5, -4.5, 4.5)),
    ToyFunction("ravine", ravine, ((0.0, 0.0),), 0.0, (-3.0, 3.0, -2.0, 2.0)),
    ToyFunction("saddle", saddle, ((0.0, 1.0), (0.0, -1.0)), -0.25, (-2.0, 2.0, -1.6, 1.6)),
    ToyFunction("himmelblau", himmelblau, ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186),
                                           (3.584428, -1.848126)), 0.0, (-5.0, 5.0, -5.0, 5.0)),
    ToyFunction("gaussian_fit", gaussian_fit, ((DATA_MEAN, 0.5 * math.log(DATA_VARIANCE)),),
                0.5 * math.log(DATA_VARIANCE) + 0.5 + math.log(2 * math.pi) / 2, (-2.0, 4.0, -1.5, 2.0),
                gaussian_fisher),
]}


def get(name: str) -> ToyFunction:
    require(name in FUNCTIONS, "functions", name, "one of " + ", ".join(FUNCTIONS))
    return FUNCTIONS[name]
