"""``trainer.compile``: torch.compile with a way back to eager execution.

torch.compile is lazy: it traces and compiles on the first call, so a missing C++ toolchain or an unsupported
operation shows up in the first training step, not where the model is wrapped. ``CompiledOrEager`` catches that
first failure, logs it in one line and runs the eager module from then on. AOTAutograd is lazier still: it
compiles the backward graph at the first ``loss.backward()``, outside any call of the module, so a backward
that fails to compile would crash the step. Each compiled call therefore sets functorch's
``force_non_lazy_backward_lowering``: the backward is compiled with the forward, inside the call, and its failure
falls back too.
"""
import logging

import torch
import torch._functorch.config as functorch_config
import torch.nn as nn

log = logging.getLogger(__name__)


class CompiledOrEager(nn.Module):
    """Calls ``torch.compile(module)``; if a call of the compiled module raises, warns once and calls ``module``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.compiled: nn.Module | None = None
        try:
            object.__setattr__(self, "compiled", torch.compile(module))  # not a submodule: one copy of the weights
        except Exception as e:  # noqa: BLE001 - e.g. a platform torch.compile does not support
            self._fall_back(e)

    def forward(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                with functorch_config.patch(force_non_lazy_backward_lowering=True):
                    return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure, reported and survived
                self._fall_back(e)
        return self.module(*args, **kwargs)

    def _fall_back(self, error: Exception) -> None:
        while (inner := getattr(error, "inner_exception", None) or error.__cause__) is not None:
            error = inner  # torch wraps the compiler's own error (BackendCompilerFailed.inner_exception, ...)
        reason = (str(error).strip().splitlines() or [""])[0]
        log.warning("trainer.compile=true but torch.compile failed (%s: %s); running eagerly",
                    type(error).__name__, reason[:300])
        object.__setattr__(self, "compiled", None)


def maybe_compile(module: nn.Module, enabled: bool) -> nn.Module:
    return CompiledOrEager(module) if enabled else module
