"""Rectified Adam; a drop-in for `torch.optim.RAdam`."""

import torch
from torch import Tensor

from optimizers import functional as F
from optimizers.base import FunctionalOptimizer, check, check_betas


class RAdam(FunctionalOptimizer):
    r"""RAdam (see :func:`optimizers.functional.radam`): Adam whose adaptive step is switched on, and scaled by
    the rectification r_t, only once the variance of the adaptive learning rate is tractable (rho_t > 5).

    .. math::
        w_t = w_{t-1} - \eta \, \frac{m_t}{1 - \beta_1^t} \cdot
            \begin{cases} r_t \sqrt{1 - \beta_2^t} / (\sqrt{v_t} + \epsilon) & \rho_t > 5 \\ 1 & \text{else}
            \end{cases}

    Args:
        params: parameters or param-group dicts.
        lr: step size eta.
        betas: (beta1, beta2), decays of the first and second moment estimates, each in [0, 1).
        eps: added to the denominator for numerical stability.
        weight_decay: lambda; an L2 penalty, or with `decoupled_weight_decay` the shrinkage w <- (1 - eta lambda) w.
        decoupled_weight_decay: AdamW-style decay instead of the L2 penalty.
        maximize: ascend the objective instead of descending it.
        foreach: multi-tensor kernels (True) or one tensor at a time (False).

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 foreach: bool = True) -> None:
        check("lr", lr, "learning rate")
        check("eps", eps, "epsilon value")
        check("weight_decay", weight_decay, "weight_decay value")
        defaults = dict(lr=lr, betas=check_betas(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    def _update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        states = self._state(params, lambda p: {
            "step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)})
        beta1, beta2 = group["betas"]
        F.radam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states], lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], decoupled_weight_decay=group["decoupled_weight_decay"],
                maximize=group["maximize"], foreach=group["foreach"])
