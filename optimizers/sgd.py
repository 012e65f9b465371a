"""SGD with optional heavy-ball or Nesterov momentum; a drop-in for `torch.optim.SGD`."""

from torch import Tensor

from optimizers import functional as F
from optimizers.base import FunctionalOptimizer, check, require


class SGD(FunctionalOptimizer):
    r"""Stochastic gradient descent, optionally with momentum (see :func:`optimizers.functional.sgd`).

    .. math::
        v_t = \mu v_{t-1} + (1 - \tau)(g_t + \lambda w_{t-1}), \quad
        w_t = w_{t-1} - \eta \, (g_t + \lambda w_{t-1} + \mu v_t \text{ if nesterov else } v_t)

    Args:
        params: parameters or param-group dicts.
        lr: step size eta.
        momentum: velocity decay mu (0 disables momentum).
        dampening: tau, scales down the gradient entering the velocity.
        weight_decay: L2 penalty lambda added to the gradient.
        nesterov: look-ahead (Nesterov) momentum; needs momentum > 0 and dampening = 0.
        maximize: ascend the objective instead of descending it.
        foreach: multi-tensor kernels (True) or one tensor at a time (False).
        lr_in_velocity: textbook form v = mu v + eta g, w = w - v (differs from torch's once lr changes).

    State per parameter: ``momentum_buffer`` (when momentum > 0).
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool = True, lr_in_velocity: bool = False) -> None:
        check("lr", lr, "learning rate")
        check("momentum", momentum, "momentum value")
        check("dampening", dampening, "dampening value")
        check("weight_decay", weight_decay, "weight_decay value")
        require(not nesterov or (momentum > 0 and dampening == 0), "nesterov", nesterov,
                f"False unless momentum > 0 and dampening == 0, got momentum={momentum}, dampening={dampening}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach, lr_in_velocity=lr_in_velocity)
        super().__init__(params, defaults)

    def _update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        states = [self.state[p] for p in params]
        buffers = [state.get("momentum_buffer") for state in states]
        F.sgd(params, grads, buffers, lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
              weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"],
              lr_in_velocity=group["lr_in_velocity"], foreach=group["foreach"])
        if group["momentum"]:
            for state, buffer in zip(states, buffers):
                state["momentum_buffer"] = buffer
