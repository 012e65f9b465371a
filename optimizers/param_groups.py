"""Which parameters get weight decay.

Decaying a bias or a normalisation gain pulls it towards 0 without regularising the function's
complexity (a BN gain's scale is undone by the next layer), so by default, as in timm, weight
decay applies only to tensors of 2+ dimensions: the Linear and Conv kernels.
"""
import torch.nn as nn


def param_groups(model: nn.Module, decay_norm_and_bias: bool = False) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [g for g in ({"params": decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
