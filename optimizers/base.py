"""What the first-order optimizers share: argument checks, the `step(closure)` protocol, lazy state."""

from collections.abc import Callable

import torch
from torch import Tensor

from utils.errors import ConfigError
from utils.rules import BOOL, Rule, integer, list_of, number, one_of

BETA = number(0, 1, hi_open=True)
# Each hyperparameter's rule, stated once: the constructors check their arguments with it and the config
# validator checks optimizer.<key> (and a wrapped optimizer's optimizer.base.<key>) with it.
HYPERPARAMETERS: dict[str, Rule] = {
    "lr": number(0), "momentum": number(0, 1, hi_open=True), "dampening": number(0, 1), "weight_decay": number(0),
    "eps": number(0), "alpha": number(0, 1), "betas": list_of(BETA, length=2), "lr_decay": number(0),
    "initial_accumulator_value": number(0), "k": integer(1), "max_iter": integer(1),
    "max_eval": integer(1, nullable=True), "history_size": integer(1), "tolerance_grad": number(0),
    "tolerance_change": number(0), "line_search_fn": one_of(None, "strong_wolfe"),
    **{flag: BOOL for flag in ("nesterov", "maximize", "foreach", "lr_in_velocity", "decay_norm_and_bias",
                               "centered", "eps_inside_sqrt", "amsgrad", "decoupled_weight_decay")},
}


def check(key: str, value, name: str | None = None, rule: Rule | None = None) -> None:
    """``HYPERPARAMETERS[key]`` (or ``rule``) applied to ``value`` (a 0-dim tensor LR counts as its number), in
    torch.optim's wording: ``Invalid <name>: <value> (must be <range>)``."""
    rule = rule or HYPERPARAMETERS[key]
    number_value = value.item() if isinstance(value, Tensor) else value
    require(rule.ok(number_value), name or key, value, rule.allowed.removeprefix("a number ").removeprefix("an integer "))


def require(ok: bool, name: str, value, allowed: str) -> None:
    """Raise ConfigError("Invalid <name>: <value> (must be <allowed>)") unless `ok`: torch.optim's wording, which
    the parity tests hold the constructors to (a ValueError, as torch's)."""
    if not ok:
        raise ConfigError(f"Invalid {name}: {value} (must be {allowed})")


def check_betas(betas) -> tuple[float, float]:
    """Both betas in [0, 1); returns them as a tuple of floats (a Hydra ListConfig becomes plain data)."""
    beta1, beta2 = betas
    check("betas", beta1, "beta parameter at index 0", BETA)
    check("betas", beta2, "beta parameter at index 1", BETA)
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
