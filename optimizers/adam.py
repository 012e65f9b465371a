"""Adam, AMSGrad and AdamW on one core; drop-ins for `torch.optim.Adam` and `torch.optim.AdamW`."""

import torch
from torch import Tensor

from optimizers import functional as F
from optimizers.base import FunctionalOptimizer, check, check_betas


class Adam(FunctionalOptimizer):
    r"""Adam (see :func:`optimizers.functional.adam`).

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        w_t = w_{t-1} - \eta \, \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    Args:
        params: parameters or param-group dicts.
        lr: step size eta.
        betas: (beta1, beta2), decays of the first and second moment estimates, each in [0, 1).
        eps: added to the denominator for numerical stability.
        weight_decay: lambda; an L2 penalty added to the gradient, or with `decoupled_weight_decay` a shrinkage
            w <- (1 - eta lambda) w applied before the Adam step (AdamW).
        amsgrad: divide by the running maximum of v_t (AMSGrad).
        maximize: ascend the objective instead of descending it.
        foreach: multi-tensor kernels (True) or one tensor at a time (False).
        decoupled_weight_decay: AdamW's decay instead of the L2 penalty.

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool = True, decoupled_weight_decay: bool = False) -> None:
        check("lr", lr, "learning rate")
        check("eps", eps, "epsilon value")
        check("weight_decay", weight_decay, "weight_decay value")
        defaults = dict(lr=lr, betas=check_betas(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        def init(p: Tensor) -> dict:
            state = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p)
            return state

        states = self._state(params, init)
        beta1, beta2 = group["betas"]
        F.adam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
               [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [], [s["step"] for s in states],
               lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
               amsgrad=group["amsgrad"], decoupled_weight_decay=group["decoupled_weight_decay"],
               maximize=group["maximize"], foreach=group["foreach"])


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter 2019): w <- (1 - eta lambda) w, then the Adam step.

    Same arguments as :class:`Adam` except the default ``weight_decay=1e-2``; decay is always decoupled.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool = True) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, foreach=foreach,
                         decoupled_weight_decay=True)
