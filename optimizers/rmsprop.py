"""RMSprop, plain or centered, with optional momentum; a drop-in for `torch.optim.RMSprop`."""

import torch
from torch import Tensor

from optimizers import functional as F
from optimizers.base import FunctionalOptimizer, check


class RMSprop(FunctionalOptimizer):
    r"""RMSprop (see :func:`optimizers.functional.rmsprop`).

    .. math::
        s_t = \alpha s_{t-1} + (1 - \alpha) g_t^2, \quad
        w_t = w_{t-1} - \eta \, g_t / (\sqrt{s_t - [\bar g_t^2]} + \epsilon)

    Args:
        params: parameters or param-group dicts.
        lr: step size eta.
        alpha: decay of the running average of squared gradients.
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty lambda added to the gradient.
        momentum: decay mu of a velocity over the normalised gradients (0 disables it).
        centered: divide by an estimate of the gradient's variance instead of its second moment.
        maximize: ascend the objective instead of descending it.
        foreach: multi-tensor kernels (True) or one tensor at a time (False).
        eps_inside_sqrt: textbook denominator sqrt(s + eps) instead of torch's sqrt(s) + eps.

    State per parameter: ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0), ``grad_avg`` (centered).
    """

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 maximize: bool = False, foreach: bool = True, eps_inside_sqrt: bool = False) -> None:
        check("lr", lr, "learning rate")
        check("alpha", alpha, "alpha value")
        check("eps", eps, "epsilon value")
        check("weight_decay", weight_decay, "weight_decay value")
        check("momentum", momentum, "momentum value")
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize, foreach=foreach, eps_inside_sqrt=eps_inside_sqrt)
        super().__init__(params, defaults)

    def _update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        def init(p: Tensor) -> dict:
            state = {"step": torch.tensor(0.0), "square_avg": torch.zeros_like(p)}
            if group["momentum"] > 0:
                state["momentum_buffer"] = torch.zeros_like(p)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(p)
            return state

        states = self._state(params, init)
        F.rmsprop(params, grads, [s["square_avg"] for s in states],
                  [s["grad_avg"] for s in states] if group["centered"] else [],
                  [s["momentum_buffer"] for s in states] if group["momentum"] > 0 else [],
                  [s["step"] for s in states],
                  lr=group["lr"], alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
                  momentum=group["momentum"], centered=group["centered"], maximize=group["maximize"],
                  eps_inside_sqrt=group["eps_inside_sqrt"], foreach=group["foreach"])
