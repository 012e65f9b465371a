"""An exponential moving average (EMA) of the weights, evaluated beside the trained weights.

It starts as a copy of the model. After every ``every``-th optimizer step t (the n-th update, n = 0, 1, ...):

    ema <- d * ema + (1 - d) * w
    d = min(decay, (1 + n) / (10 + n))    warmup=ramp   (TensorFlow's ExponentialMovingAverage with num_updates)
    d = decay * (t / T)^3                 warmup=cubic  (airbench94's lookahead schedule; T the run's total steps)
    d = decay                             warmup=none

BatchNorm's running mean and variance are averaged like the weights (``AveragedModel(use_buffers=True)``);
integer buffers (``num_batches_tracked``) are copied from the model. With ``lookahead`` the trained weights are
reset to the EMA after each update and become the EMA at the run's last step (airbench94's lookahead: the fast
weights restart from the slow ones; the optimizer's momentum is kept).
"""
import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

from training.options import EMA_WARMUPS


class WeightEMA:
    def __init__(self, model: nn.Module, *, decay: float, every: int = 1, warmup: str = "ramp",
                 lookahead: bool = False, total_steps: int):
        if not 0 < decay < 1:
            raise ValueError(f"decay={decay}: must be in (0, 1)")
        if warmup not in EMA_WARMUPS:
            raise ValueError(f"warmup={warmup!r}: must be one of {', '.join(EMA_WARMUPS)}")
        self.decay, self.every, self.warmup, self.lookahead = decay, every, warmup, lookahead
        self.total_steps = total_steps
        self.averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=True)
        self.averaged.update_parameters(model)  # the first call copies: the EMA starts at the initial weights
        self.updates = 0  # n: updates after the initial copy (AveragedModel's n_averaged - 1, kept on the host)
        self._weight = 0.0  # 1 - d of the update under way

    @property
    def module(self) -> nn.Module:
        """The averaged model, to evaluate."""
        return self.averaged.module

    def decay_at(self, n: int, step: int) -> float:
        """d for the n-th update, made after optimizer step ``step``."""
        if self.warmup == "ramp":
            return min(self.decay, (1 + n) / (10 + n))
        if self.warmup == "cubic":
            return self.decay * (step / self.total_steps) ** 3
        return self.decay

    @torch.no_grad()
    def step(self, model: nn.Module, step: int) -> None:
        """After optimizer step ``step`` (counted from 1): update if due; with lookahead, reset ``model`` to the
        EMA after an update and at the last step."""
        updated = step % self.every == 0
        if updated:
            self._weight = 1 - self.decay_at(self.updates, step)
            self.averaged.update_parameters(model)
            self.updates += 1
        if self.lookahead and (updated or step == self.total_steps):
            torch._foreach_copy_(_tensors(model), _tensors(self.module))

    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n_averaged) -> None:
        """ema <- ema + (1 - d) (w - ema) on floating tensors (one foreach call per device and dtype); copy others."""
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, self._weight)
        else:
            torch._foreach_copy_(averaged, current)

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)
        self.updates = int(self.averaged.n_averaged) - 1


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    """Parameters then buffers, in the order AveragedModel(use_buffers=True) pairs them."""
    return [t.detach() for t in (*model.parameters(), *model.buffers())]
