"""One training step, shared by the Trainer, the sanity checks and the LR finder.

``train_step`` in nanoGPT's order:
    forward under autocast -> loss -> (scaled) backward -> unscale -> clip (pre-clip norm kept)
    -> optimizer step (skipped by the scaler on fp16 overflow) -> zero grads (set_to_none)
``closure_step`` is the same step for optimizers that re-evaluate the loss (L-BFGS): the closure zeroes the
gradients, runs forward and an unscaled backward over its batches, clips, and returns the loss.
The learning rate is the caller's business (the loop writes it before the step). Nothing here waits for the
device: the results are 0-dim tensors.
"""
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from training.autoclip import AutoClip
from training.clipping import ClipResult, clip_gradients
from training.precision import Precision

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StepResult:
    loss: torch.Tensor  # 0-dim, detached: the loss the step's gradients came from
    logits: torch.Tensor  # (B, C), detached
    labels: torch.Tensor  # (B,)
    grad_norm: torch.Tensor  # 0-dim: global L2 norm before clipping (nan for a skipped non-finite step)
    clipped: torch.Tensor  # 0-dim bool
    clip_threshold: torch.Tensor | None = None  # 0-dim: autoclip's threshold this step (None for other modes)
    skipped: bool = False  # ``skip_nonfinite`` dropped the step: its loss was not finite, the weights stayed


@dataclass(frozen=True)
class GradientClip:
    """Clipping of the trainable parameters' gradients (training/clipping.py; ``autoclip``: training/autoclip.py,
    whose norm history this object owns, so each GradientClip starts its own), then an optional observer
    (the gradient monitor) that sees the clipped gradients before the optimizer does."""
    mode: str = "none"
    max_value: float = 1.0
    observe: Callable[[], None] | None = None
    percentile: float = 10.0
    window: int | None = None
    auto: AutoClip | None = field(init=False, default=None)

    def __post_init__(self):
        if self.mode == "autoclip":
            object.__setattr__(self, "auto", AutoClip(self.percentile, self.window))

    def __call__(self, params: list[torch.Tensor]) -> ClipResult:
        result = self.auto(params) if self.auto is not None else clip_gradients(params, self.mode, self.max_value)
        if self.observe is not None:
            self.observe()
        return result


def train_step(model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer, precision: Precision,
               x: torch.Tensor, y: torch.Tensor, *, clip: GradientClip = GradientClip(),
               skip_nonfinite: bool = False) -> StepResult:
    """One optimizer step on the batch (x, y). ``skip_nonfinite``: a non-finite loss drops the step (one
    synchronisation per step: the price of checking)."""
    with precision.autocast():
        logits = model(x)  # (B, C)
        loss = loss_fn(logits, y)
    if skip_nonfinite and not torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        nan = torch.full((), float("nan"), device=loss.device)
        return StepResult(loss.detach(), logits.detach(), y, nan, torch.zeros((), dtype=torch.bool, device=nan.device),
                          skipped=True)
    precision.backward(loss)
    precision.unscale_(optimizer)  # clip thresholds are in true units
    clipped = clip(_trainable(model))
    precision.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss.detach(), logits.detach(), y, clipped.total_norm, clipped.clipped, clipped.threshold)


def closure_step(model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer, precision: Precision,
                 batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_examples: int, *,
                 clip: GradientClip = GradientClip()) -> StepResult:
    """One step of a closure optimizer on the mean loss over ``batches`` (``num_examples`` in all):
    L = sum_b loss_b * |b| / num_examples. Returns the first evaluation's loss, logits, labels and clip."""
    first: dict = {}

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for bx, by in batches:
            with precision.autocast():
                logits = model(bx)  # (B, C)
                loss = loss_fn(logits, by) * (len(by) / num_examples)
            loss.backward()  # unscaled: the optimizer evaluates the loss itself, fp16 overflow is its problem
            losses.append(loss.detach())
            first.setdefault("logits", (logits.detach(), by))
        first.setdefault("clip", clip(_trainable(model)))
        return sum(losses)

    loss = optimizer.step(closure)
    logits, labels = first["logits"]
    clip_result = first["clip"]
    return StepResult(loss.detach(), logits, labels, clip_result.total_norm, clip_result.clipped,
                      clip_result.threshold)


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    return getattr(optimizer, "requires_closure", False)


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]
