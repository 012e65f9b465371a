"""Test-time augmentation: the logits of an image averaged with those of its mirror and shifted copies."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def test_time_logits(model: nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    """Logits under test-time augmentation (airbench's levels). ``none``: f(x). ``flip``: m(x) = (f(x) +
    f(mirror x)) / 2. ``flip_translate``: m(x) / 2 + (m(x shifted 1 px down-right) + m(x shifted 1 px
    up-left)) / 4, the shifts filling the vacated edge by reflection."""
    if tta == "none":
        return model(x)

    def mirrored(v):
        return (model(v) + model(v.flip(3))) / 2

    if tta == "flip":
        return mirrored(x)
    padded, (h, w) = F.pad(x, (1, 1, 1, 1), mode="reflect"), x.shape[2:]  # (B, C, H+2, W+2)
    return mirrored(x) / 2 + (mirrored(padded[:, :, :h, :w]) + mirrored(padded[:, :, 2:, 2:])) / 4
