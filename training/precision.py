"""Mixed precision: autocast in fp16/bf16, and loss scaling for fp16.

fp16 has 5 exponent bits: gradients below ~6e-8 flush to zero. Loss scaling multiplies the loss by
S before backward (so gradients are S times larger and representable), divides them by S before
clipping and the step, and skips any step whose gradients overflowed (inf/nan), leaving weights and
optimizer state untouched. Dynamic scaling (torch.amp.GradScaler) halves S on overflow and doubles
it after ``growth_interval`` clean steps; a static scale keeps S fixed. bf16 has fp32's exponent
range, so it needs no scaler.
"""
import logging
from contextlib import nullcontext

import torch

from utils.device import BF16_FLAGS, cpu_bf16_instructions

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: the fastest safe precision, bf16 where the hardware computes it natively (a CUDA GPU that
    supports it; a CPU with bf16 matrix instructions), else fp32. Any other name is returned as it is."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    found = cpu_bf16_instructions()
    chosen = "bf16" if found else "fp32"
    log.info("precision auto -> %s: this CPU %s", chosen,
             f"has {', '.join(found)}" if found else f"has none of {', '.join(BF16_FLAGS)}")
    return chosen


class Precision:
    def __init__(self, mode: str, device: torch.device, loss_scale: float | None = None,
                 growth_interval: int = 2000):
        if mode not in PRECISIONS:
            raise ValueError(f"trainer.precision={mode!r} is unknown; allowed: auto, {', '.join(PRECISIONS)}")
        if loss_scale is not None and loss_scale <= 0:
            raise ValueError(f"trainer.loss_scale={loss_scale}: must be > 0 or null (dynamic)")
        self.mode, self.device, self.static_scale = mode, device, loss_scale
        self.scaler = torch.amp.GradScaler(device.type, enabled=mode == "fp16",
                                           init_scale=loss_scale or 2.0 ** 16, growth_interval=growth_interval)

    @property
    def uses_scaler(self) -> bool:
        return self.scaler.is_enabled()

    def autocast(self):
        if self.mode == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.mode])

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide gradients by S in place (before clipping, so clip thresholds are in true units)."""
        if self.uses_scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Step unless the unscaled gradients hold inf/nan, then update S."""
        self.scaler.step(optimizer)
        self.scaler.update(self.static_scale)

    def scale(self) -> float:
        return self.scaler.get_scale() if self.uses_scaler else 1.0

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)
