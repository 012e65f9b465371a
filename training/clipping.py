"""Gradient clipping: global-norm, element-value and unit-wise adaptive (AGC).

Every mode returns the pre-clip global L2 norm ‖g‖ = sqrt(Σ_p ‖g_p‖²) and whether clipping changed anything, both as
0-dim tensors, so the loop syncs with the device only when it logs them.
"""
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.nn.utils import clip_grad_norm_, clip_grad_value_, get_total_norm

from training.options import CLIP_MODES as MODES
from utils.errors import require


@dataclass(frozen=True)
class ClipResult:
    total_norm: torch.Tensor  # 0-dim: global L2 norm of all gradients before clipping
    clipped: torch.Tensor  # 0-dim bool: whether clipping changed any gradient
    threshold: torch.Tensor | None = None  # 0-dim: the norm threshold autoclip chose this step (None otherwise)


@torch.no_grad()
def clip_gradients(parameters: torch.Tensor | Iterable[torch.Tensor], mode: str, max_value: float, *,
                   agc_eps: float = 1e-3) -> ClipResult:
    """Clip the ``.grad`` of ``parameters`` in place; parameters without a gradient are skipped.

    - ``none``:  only measure ‖g‖.
    - ``norm``:  g ← g · min(1, c / (‖g‖ + 1e-6)), c = ``max_value`` (torch's ``clip_grad_norm_``).
    - ``value``: g ← clamp(g, -c, c) element-wise (torch's ``clip_grad_value_``).
    - ``agc``:   adaptive gradient clipping (Brock et al. 2021, NFNets), λ = ``max_value``. Per unit i of each
      parameter W (row / output filter: all dims but the first; the whole tensor when ndim <= 1), with
      w_i = max(‖W_i‖, ε) and ε = ``agc_eps``:  G_i ← G_i · λ w_i / ‖G_i‖  if  ‖G_i‖ / w_i > λ.
      The paper leaves the final classifier layer unclipped: pass the parameters to clip accordingly.
    """
    _check(mode, max_value, agc_eps)
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    device = params[0].device if params else torch.device("cpu")
    params = [p for p in params if p.grad is not None]
    if not params:  # on the parameters' device, where the loop stacks it with other steps' numbers
        return ClipResult(torch.zeros((), device=device), torch.zeros((), dtype=torch.bool, device=device))
    if mode == "norm":
        total_norm = clip_grad_norm_(params, max_value)
        return ClipResult(total_norm, max_value / (total_norm + 1e-6) < 1)
    grads = [p.grad for p in params]
    total_norm = get_total_norm(grads)
    if mode == "none":
        return ClipResult(total_norm, torch.zeros((), dtype=torch.bool, device=total_norm.device))
    if mode == "value":
        clipped = get_total_norm(grads, norm_type=float("inf")) > max_value
        clip_grad_value_(params, max_value)
        return ClipResult(total_norm, clipped)
    return ClipResult(total_norm, _agc_(params, max_value, agc_eps, total_norm.device))


def _unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each unit (over all dims but the first), shaped to broadcast against x; whole tensor if ndim <= 1."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def _agc_(params: list[torch.Tensor], clip_factor: float, eps: float, device: torch.device) -> torch.Tensor:
    """Scale each unit's gradient by min(1, λ w_i / ‖G_i‖) in place; return whether any unit was scaled (0-dim)."""
    clipped = []
    for p in params:
        max_norm = _unitwise_norm(p).clamp_(min=eps).mul_(clip_factor)  # λ w_i
        scale = (max_norm / _unitwise_norm(p.grad)).clamp_(max=1.0)  # ‖G_i‖ = 0 gives inf, clamped to 1
        clipped.append((scale < 1).any().to(device))
        p.grad.mul_(scale)
    return torch.stack(clipped).any()


def _check(mode: str, max_value: float, agc_eps: float) -> None:
    stateless = tuple(m for m in MODES if m != "autoclip")  # autoclip keeps a norm history: training/autoclip.py
    require(mode in stateless, "clip mode", mode, f"one of {', '.join(stateless)}")
    require(mode == "none" or max_value > 0, "clip max_value", max_value, f"a value > 0 with mode={mode!r}")
    require(mode != "agc" or agc_eps > 0, "agc_eps", agc_eps, "a value > 0")
