"""Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back") around any optimizer."""

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from optimizers import functional as F
from optimizers.base import check


class Lookahead(Optimizer):
    r"""Run the base (fast) optimizer; every k of its steps pull slow weights toward the fast ones and restart
    the fast weights from there (see :func:`optimizers.functional.lookahead`):

    .. math::
        \theta_{t,i} = \text{base step}(\theta_{t,i-1}), \; i = 1..k; \quad
        \phi_{t+1} = \phi_t + \alpha (\theta_{t,k} - \phi_t); \quad \theta_{t+1,0} = \phi_{t+1}

    Slow weights start as a copy of the parameters at the first step (phi_0 = theta_0).

    Args:
        params: parameters or param-group dicts, handed to `base`; ``None`` when `base` is already built.
        base: a callable params -> optimizer (e.g. ``functools.partial(SGD, lr=0.1, momentum=0.9)``), or an
            optimizer.
        k: number of fast steps between synchronisations, >= 1.
        alpha: slow-weight step size in [0, 1].

    ``param_groups`` are the base optimizer's own dicts, so LR schedulers and GradScaler drive it directly.
    ``state_dict()`` is the base's, with each parameter's slow weights under ``slow_param`` and the step counter,
    k and alpha under ``lookahead``.
    """

    def __init__(self, params: Iterable | None, base: Callable[..., Optimizer] | Optimizer, k: int = 5,
                 alpha: float = 0.5) -> None:
        check("k", k)
        check("alpha", alpha)
        self.base = base if isinstance(base, Optimizer) else base(params)
        self.k, self.alpha, self.steps = k, alpha, 0
        super().__init__(self._params(), {"k": k, "alpha": alpha})
        self.param_groups = self.base.param_groups

    def _params(self) -> list[Tensor]:
        return [p for group in self.base.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One base step; every k-th also synchronises slow and fast weights. Returns the closure's loss."""
        params = self._params()
        for p in params:
            if p not in self.state:
                self.state[p]["slow_param"] = p.detach().clone()
        loss = self.base.step(closure)
        self.steps += 1
        if self.steps % self.k == 0:
            F.lookahead([self.state[p]["slow_param"] for p in params], params, alpha=self.alpha)
        return loss

    def state_dict(self) -> dict:
        state_dict = self.base.state_dict()
        index = {p: i for i, p in enumerate(self._params())}
        for p, state in self.state.items():
            i = index[p]
            state_dict["state"][i] = {**state_dict["state"].get(i, {}), "slow_param": state["slow_param"]}
        state_dict["lookahead"] = {"steps": self.steps, "k": self.k, "alpha": self.alpha}
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        base_state, slow = {}, {}
        for i, state in state_dict["state"].items():
            state = dict(state)
            slow[i] = state.pop("slow_param")
            if state:
                base_state[i] = state
        self.base.load_state_dict({"state": base_state, "param_groups": state_dict["param_groups"]})
        self.param_groups = self.base.param_groups
        params = self._params()
        self.state = defaultdict(dict, {params[i]: {"slow_param": t.to(params[i], copy=True)}
                                        for i, t in slow.items()})
        self.steps, self.k, self.alpha = (state_dict["lookahead"][key] for key in ("steps", "k", "alpha"))
