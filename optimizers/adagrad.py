"""Adagrad; a drop-in for `torch.optim.Adagrad`."""

import torch
from torch import Tensor

from optimizers import functional as F
from optimizers.base import FunctionalOptimizer, check


class Adagrad(FunctionalOptimizer):
    r"""Adagrad (see :func:`optimizers.functional.adagrad`).

    .. math::
        s_t = s_{t-1} + g_t^2, \quad
        w_t = w_{t-1} - \frac{\eta}{1 + (t - 1)\delta} \, g_t / (\sqrt{s_t} + \epsilon)

    Args:
        params: parameters or param-group dicts.
        lr: step size eta.
        lr_decay: delta, the step size decays as eta / (1 + (t - 1) delta).
        weight_decay: L2 penalty lambda added to the gradient.
        initial_accumulator_value: s_0, the starting sum of squared gradients.
        eps: added to the denominator for numerical stability.
        maximize: ascend the objective instead of descending it.
        foreach: multi-tensor kernels (True) or one tensor at a time (False).

    State per parameter: ``step``, ``sum``. Unlike torch.optim.Adagrad, state is created at the first step
    and each param group uses its own ``initial_accumulator_value``.
    """

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, *, maximize: bool = False,
                 foreach: bool = True) -> None:
        check("lr", lr, "learning rate")
        check("lr_decay", lr_decay, "lr_decay value")
        check("weight_decay", weight_decay, "weight_decay value")
        check("initial_accumulator_value", initial_accumulator_value, "initial_accumulator_value value")
        check("eps", eps, "epsilon value")
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults)

    def _update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        states = self._state(params, lambda p: {
            "step": torch.tensor(0.0), "sum": torch.full_like(p, group["initial_accumulator_value"])})
        F.adagrad(params, grads, [s["sum"] for s in states], [s["step"] for s in states], lr=group["lr"],
                  lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
                  maximize=group["maximize"], foreach=group["foreach"])
