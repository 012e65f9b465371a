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
import torch.nn as nn

from training.options import LOSS_SCALE, PRECISIONS
from utils.device import BF16_FLAGS, cpu_bf16_instructions
from utils.errors import require

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores. Below, torch.cuda.is_bf16_supported() counts emulation


def resolve_precision(name: str, device: torch.device, closure_optimizer: bool = False) -> str:
    """``auto``: the fastest safe precision on ``device`` (the chosen one, not the current one), logged with the
    reason: on a GPU bf16 at compute capability >= 8.0, else fp16 with loss scaling; on a CPU bf16 where it has
    bf16 matrix instructions, else fp32. Any other name is returned as it is (bf16 asked of a CPU without those
    instructions with a warning: it is emulated there). A closure optimizer (L-BFGS) evaluates its loss outside
    the loss scaler, so fp16 is refused with it, and ``auto`` then picks fp32."""
    require(not (name == "fp16" and closure_optimizer), "trainer.precision", name,
            "bf16, fp32 or auto with a closure optimizer (L-BFGS): its closure has no loss scaling, so small "
            "gradients would flush to zero in fp16")
    if name == "bf16" and device.type == "cpu" and not cpu_bf16_instructions():
        log.warning("trainer.precision=bf16 on a CPU with none of %s: bf16 is emulated here and several times "
                    "slower than fp32 (a ResNet-20 step 3x with 2 threads, 10x with 1, on an AVX2-only AMD EPYC); "
                    "trainer.precision=auto picks fp32 here", ", ".join(BF16_FLAGS))
    if name != "auto":
        return name
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        gpu = f"{torch.cuda.get_device_name(device)} (compute capability {capability[0]}.{capability[1]})"
        if capability >= NATIVE_BF16_CAPABILITY:
            chosen, reason = "bf16", f"{gpu} computes bf16 natively"
        elif closure_optimizer:
            chosen, reason = "fp32", f"{gpu} has no native bf16, and a closure optimizer (L-BFGS) no loss scaling"
        else:
            chosen, reason = "fp16", f"{gpu} has no native bf16 (needs 8.0): fp16 with dynamic loss scaling"
    else:
        found = cpu_bf16_instructions()
        chosen = "bf16" if found else "fp32"
        reason = f"this CPU has {', '.join(found)}" if found else f"this CPU has none of {', '.join(BF16_FLAGS)}"
    log.info("precision auto -> %s: %s", chosen, reason)
    return chosen


NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _to_fp32(module: nn.Module, inputs: tuple) -> tuple:
    return tuple(x.float() if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs)


def keep_norms_fp32(model: nn.Module) -> int:
    """Give each normalisation layer of ``model`` fp32 inputs (a forward pre-hook); returns how many.

    Autocast casts no input of batch norm, so on the CPU a bf16 convolution's output is normalised in its dtype:
    the normalised output, and the ReLU and residual add after it, are rounded to bf16's 8 significant bits
    (relative error up to 2^-9, ~0.2%), the residual stream included. Cast to fp32, the norm returns fp32; the ReLU
    and the residual sum follow in fp32, and the next convolution casts back to bf16: only the matrix products
    run in low precision.
    """
    layers = [m for m in model.modules() if isinstance(m, NORMS)]
    for layer in layers:
        layer.register_forward_pre_hook(_to_fp32)
    return len(layers)


class Precision:
    def __init__(self, mode: str, device: torch.device, loss_scale: float | None = None,
                 growth_interval: int = 2000):
        require(mode in PRECISIONS, "trainer.precision", mode, f"one of auto, {', '.join(PRECISIONS)}")
        LOSS_SCALE.check("trainer.loss_scale", loss_scale)
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
