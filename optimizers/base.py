"""What the first-order optimizers share: argument checks, the `step(closure)` protocol, lazy state."""

from collections.abc import Callable

import torch
from torch import Tensor


def require(ok: bool, name: str, value, allowed: str) -> None:
    """Raise ValueError("Invalid <name>: <value> (must be <allowed>)") unless `ok`."""
    if not ok:
        raise ValueError(f"Invalid {name}: {value} (must be {allowed})")


def check_betas(betas) -> tuple[float, float]:
    """Both betas in [0, 1); returns them as a tuple of floats (a Hydra ListConfig becomes plain data)."""
    beta1, beta2 = betas
    require(0.0 <= beta1 < 1.0, "beta parameter at index 0", beta1, "in [0, 1)")
    require(0.0 <= beta2 < 1.0, "beta parameter at index 1", beta2, "in [0, 1)")
    return float(beta1), float(beta2)


class FunctionalOptimizer(torch.optim.Optimizer):
    """A `torch.optim.Optimizer` whose step hands each param group to one function of `optimizers.functional`.

    Subclasses implement `_update(group, params, grads)` for the parameters that have a gradient; state lives in
    `self.state[p]` under torch's key names, so `state_dict()` keys it by parameter index like torch.optim.
    """

    def __setstate__(self, state: dict) -> None:
        """Groups loaded from elsewhere (torch.optim's state_dict, an older checkpoint) get missing options
        from the defaults."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def _update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        raise NotImplementedError

    def _state(self, params: list[Tensor], init: Callable[[Tensor], dict]) -> list[dict]:
        """Each parameter's state dict, filled by `init(p)` on first use."""
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if not state:
                state.update(init(p))
        return states

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient; `closure` re-evaluates the loss and returns it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params, [p.grad for p in params])
        return loss
