"""Two-dimensional test functions for optimizers, with their minima and a box to draw them in.

Each ``f`` takes ``w`` whose first axis holds (w1, w2): a Parameter of shape (2,) or a grid of shape (2, H, W).

    rosenbrock  (1 - w1)^2 + 100 (w2 - w1^2)^2            a curved valley; minimum 0 at (1, 1)
    beale       (1.5 - w1 + w1 w2)^2 + (2.25 - w1 + w1 w2^2)^2 + (2.625 - w1 + w1 w2^3)^2
                                                           flat plateaus, sharp walls; minimum 0 at (3, 0.5)
    ravine      w1^2 + 10 w2^2                             condition number 10; minimum 0 at (0, 0)
    saddle      w1^2 + w2^4 / 4 - w2^2 / 2                 a saddle at (0, 0) (curvatures 2 and -1) between
                                                           two minima -1/4 at (0, +-1)
    himmelblau  (w1^2 + w2 - 11)^2 + (w1 + w2^2 - 7)^2     four minima 0
"""
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from analysis.checks import require


@dataclass(frozen=True)
class ToyFunction:
    name: str
    f: Callable[[Tensor], Tensor]
    minima: tuple[tuple[float, float], ...]
    f_min: float
    box: tuple[float, float, float, float]  # w1 from, w1 to, w2 from, w2 to (the plots' view)


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


FUNCTIONS = {fn.name: fn for fn in [
    ToyFunction("rosenbrock", rosenbrock, ((1.0, 1.0),), 0.0, (-2.0, 2.0, -1.0, 3.0)),
    ToyFunction("beale", beale, ((3.0, 0.5),), 0.0, (-4.5, 4.5, -4.5, 4.5)),
    ToyFunction("ravine", ravine, ((0.0, 0.0),), 0.0, (-3.0, 3.0, -2.0, 2.0)),
    ToyFunction("saddle", saddle, ((0.0, 1.0), (0.0, -1.0)), -0.25, (-2.0, 2.0, -1.6, 1.6)),
    ToyFunction("himmelblau", himmelblau, ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186),
                                           (3.584428, -1.848126)), 0.0, (-5.0, 5.0, -5.0, 5.0)),
]}


def get(name: str) -> ToyFunction:
    require(name in FUNCTIONS, "functions", name, "one of " + ", ".join(FUNCTIONS))
    return FUNCTIONS[name]
