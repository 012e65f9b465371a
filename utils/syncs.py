"""Counting host-device synchronisations, on any device (the CPU included), for the sync-budget checks.

On a GPU the host queues kernels and runs ahead; it waits for the device whenever Python needs a value the device
holds (``.item()``, ``.tolist()``, ``bool(t)``, ``float(t)``, ``f"{t:.3f}"``, ``.cpu()``, ``.numpy()``) and when it
copies a Python value to the device (``torch.tensor(v, device=...)``: a blocking host-to-device copy). Each such
call is counted here as the code asks for it, so the count is the same on the CPU as on a GPU, and a test can hold
a training loop to a budget without a GPU. ``torch.cuda.set_sync_debug_mode("error")`` is the GPU's own check.
"""
from typing import Callable

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__format__,
         torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.cpu,
         torch.Tensor.numpy}


class SyncCounter(TorchFunctionMode):
    """Within ``with SyncCounter() as syncs:``, ``syncs.events`` lists the (step, call) of each synchronising call.

    ``host_side(t)`` names tensors that live on the host by design, whose reads cost no wait (an optimizer's
    ``step`` counters, as in torch.optim); ``step`` is the caller's label for the current step (set it as it runs).
    """

    def __init__(self, host_side: Callable[[torch.Tensor], bool] = lambda t: False):
        super().__init__()
        self.host_side, self.step, self.events = host_side, None, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READS and not self.host_side(args[0]):
            self.events.append((self.step, func.__name__))
        elif func is torch.tensor and kwargs.get("device") is not None:
            self.events.append((self.step, "tensor(..., device=...)"))
        return func(*args, **kwargs)

    def at(self, step) -> list[str]:
        return [name for s, name in self.events if s == step]


def optimizer_step_counters(optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], bool]:
    """A ``host_side`` for ``optimizer``: its ``step`` counters, which torch.optim keeps on the host (non-capturable
    optimizers), so reading them costs no wait."""
    return lambda t: any(t is state.get("step") for state in optimizer.state.values())


def count_per_step(run: Callable[[], object], model: nn.Module, flushes: set[int],
                   host_side: Callable[[torch.Tensor], bool] = lambda t: False) -> SyncCounter:
    """Call ``run()`` (a training loop over ``model``) counting synchronisations per step: step k lasts from the
    k-th training-mode forward of ``model`` to the next. On a GPU the steps not in ``flushes`` (those after which
    the loop is not meant to read the device) also run under ``torch.cuda.set_sync_debug_mode("error")``."""
    counter, on_gpu = SyncCounter(host_side), next(model.parameters()).device.type == "cuda"
    counter.step = 0

    def next_step(module, _inputs):
        if module.training:
            counter.step += 1
            if on_gpu:
                torch.cuda.set_sync_debug_mode("default" if counter.step in flushes else "error")

    handle = model.register_forward_pre_hook(next_step)
    try:
        with counter:
            run()
    finally:
        handle.remove()
        if on_gpu:
            torch.cuda.set_sync_debug_mode("default")
    return counter
