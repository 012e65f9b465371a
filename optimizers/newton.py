r"""Damped Newton steps with an explicit curvature matrix: Newton's method (C = the Hessian) or the natural
gradient (C = the Fisher information). For problems small enough to form C: the 2-D toy functions, a small
logistic regression or MLP in ``analysis.second_order``.
"""

from collections.abc import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from optimizers.base import require


def damped_newton_direction(grad: Tensor, curvature: Tensor, damping: float) -> Tensor:
    r"""d = -(C + \lambda I)^{-1} g with \lambda = max(damping, damping - \lambda_min(C)).

    The shift keeps every eigenvalue of C + \lambda I at least ``damping``: on a convex problem with
    damping = 0 this is the exact Newton (or natural-gradient) step; where C has a negative eigenvalue (a saddle)
    the direction still descends, d^T g < 0, instead of being drawn to the stationary point.
    """
    eigenvalues, basis = torch.linalg.eigh(curvature)
    shift = max(damping, damping - eigenvalues.min().item())
    return -basis @ ((basis.T @ grad) / (eigenvalues + shift))


class DampedNewton(Optimizer):
    r"""w <- w + t d, d = -(C(w) + \lambda I)^{-1} \nabla f(w) (see :func:`damped_newton_direction`), one group.

    ``curvature(w)`` returns C at the flattened parameters w: the Hessian of f gives Newton's method, the Fisher
    of the model's distribution the natural gradient. t starts at ``lr``; with ``line_search`` it is halved until
    the Armijo condition f(w + t d) <= f(w) + c t g^T d holds (c = 1e-4, at most ``max_halvings`` times).

    Args:
        params: the parameters (one group; flattened in order).
        curvature: w (flat, detached) -> C (n x n).
        lr: the initial step length t (1: the full Newton step).
        damping: lambda, the least eigenvalue kept in C + lambda I.
        line_search: backtrack t by halving until Armijo's sufficient decrease.
        max_halvings: the most halvings per step.
    """

    requires_closure = True  # the line search re-evaluates f

    def __init__(self, params, curvature: Callable[[Tensor], Tensor], lr: float = 1.0, damping: float = 0.0,
                 line_search: bool = True, max_halvings: int = 30) -> None:
        require(lr > 0.0, "learning rate", lr, "> 0")
        require(damping >= 0.0, "damping", damping, ">= 0")
        require(max_halvings >= 0, "max_halvings", max_halvings, ">= 0")
        super().__init__(params, dict(lr=lr, damping=damping, line_search=line_search, max_halvings=max_halvings))
        require(len(self.param_groups) == 1, "param_groups", len(self.param_groups), "one group")
        self.curvature = curvature

    @property
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    def _set(self, flat: Tensor) -> None:
        torch._foreach_copy_(self._params, [v.view_as(p) for p, v in zip(
            self._params, flat.split([p.numel() for p in self._params]))])

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        """One damped Newton step; ``closure`` clears the gradients, computes f, calls backward, returns f."""
        group = self.param_groups[0]
        closure = torch.enable_grad()(closure)
        loss = closure()
        w = torch.cat([p.detach().reshape(-1) for p in self._params])
        g = torch.cat([p.grad.reshape(-1) for p in self._params])
        d = damped_newton_direction(g, self.curvature(w.clone()), group["damping"])
        t, slope = group["lr"], g.dot(d).item()
        self._set(w + t * d)
        if group["line_search"]:
            for _ in range(group["max_halvings"]):
                if float(closure()) <= float(loss) + 1e-4 * t * slope:
                    break
                t /= 2
                self._set(w + t * d)
        return loss
