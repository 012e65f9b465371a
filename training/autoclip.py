"""AutoClip (Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for Source Separation Networks").

At step t, with n_t = ||g_t|| the global L2 norm of the gradients before clipping:

    H_t = (n_1, ..., n_t)              (or its last ``window`` entries)
    c_t = percentile_p(H_t)            (linear interpolation between order statistics, numpy's default)
    g_t <- g_t * min(1, c_t / (n_t + 1e-6))

so the threshold follows the run's own gradient scale: with p = 10, about 90% of the steps are clipped, to the
norm of the smallest tenth. Non-finite norms (fp16 overflow; the scaler skips those steps) are kept out of the
percentile. The history lives on the gradients' device and is read back only by ``state_dict`` (checkpoints):
the step never waits for the device.
"""
import math

import torch
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from training.clipping import ClipResult


class AutoClip:
    """Clipping at the ``percentile``-th percentile (0-100) of the gradient-norm history (all of it, or the last
    ``window`` >= 1 steps; the rules live in training/options.py). ``threshold`` is the last step's c_t."""

    def __init__(self, percentile: float, window: int | None = None):
        self.percentile, self.window = float(percentile), window
        self.history = torch.empty(0)  # n_1 .. n_t; capacity doubles as it fills (``count`` entries are used)
        self.count = 0
        self.threshold = torch.tensor(math.nan)

    def _append(self, norm: torch.Tensor) -> None:
        if self.history.device != norm.device or self.count == len(self.history):
            grown = torch.empty(max(64, 2 * len(self.history)), dtype=torch.float32, device=norm.device)
            grown[:self.count] = self.history[:self.count].to(norm.device)
            self.history = grown
        self.history[self.count] = torch.where(torch.isfinite(norm), norm, torch.nan)
        self.count += 1

    def recent(self) -> torch.Tensor:
        """H_t: the norms the threshold is taken over (non-finite ones as nan)."""
        start = 0 if self.window is None else max(0, self.count - self.window)
        return self.history[start:self.count]

    @torch.no_grad()
    def __call__(self, params: list[torch.Tensor]) -> ClipResult:
        """Record ||g||, clip the ``.grad`` of ``params`` in place at the percentile, return the pre-clip norm."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            device = params[0].device if params else torch.device("cpu")
            return ClipResult(torch.zeros((), device=device), torch.zeros((), dtype=torch.bool, device=device))
        total_norm = get_total_norm(grads)
        self._append(total_norm)
        self.threshold = torch.nanquantile(self.recent(), self.percentile / 100)
        clip_grads_with_norm_([p for p in params if p.grad is not None], self.threshold, total_norm)
        # clipped only when c_t < n_t (at c_t = n_t torch still scales by n / (n + 1e-6))
        return ClipResult(total_norm, self.threshold < total_norm, self.threshold)

    def state_dict(self) -> dict:
        return {"percentile": self.percentile, "window": self.window, "history": self.history[:self.count].cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's history (the percentile and window are the config's, not the file's)."""
        self.history = state["history"].clone().to(torch.float32)
        self.count = len(self.history)
