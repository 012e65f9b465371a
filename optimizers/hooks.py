"""Forward hooks that call an optimizer without keeping it alive or being copied with the model."""
import weakref

import torch
import torch.nn as nn
from torch import Tensor


class WeakHook:
    """Calls ``optimizer.<method>`` through a weak reference: a deep copy of the model (the sanity checks make
    one) copies this hook without copying the optimizer, and the optimizer ignores modules it does not own."""

    def __init__(self, optimizer: torch.optim.Optimizer, method: str) -> None:
        self.optimizer, self.method = weakref.ref(optimizer), method

    def __call__(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        optimizer = self.optimizer()
        if optimizer is not None and id(module) in optimizer._owned:
            getattr(optimizer, self.method)(module, inputs, output)
