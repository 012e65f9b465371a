"""A small baseline CNN: three conv blocks with batch norm, then a linear head."""
from typing import Sequence

import torch
import torch.nn as nn

from models.init import init_weights
from models.layers import Float32Linear, activation as make_activation


class CNN(nn.Module):
    """[Conv3x3 -> BN -> act -> Conv3x3 -> BN -> act -> MaxPool2] x 3 -> global avg pool -> Linear."""

    def __init__(self, *, in_channels: int, num_classes: int, channels: Sequence[int] = (32, 64, 128),
                 activation: str = "relu", batch_norm: bool = True, init: str = "default", sync_bn: bool = False):
        super().__init__()
        blocks, width = [], in_channels
        for out in channels:
            layers = []
            for cin in (width, out):
                layers += [nn.Conv2d(cin, out, 3, padding=1, bias=not batch_norm)]
                layers += [nn.BatchNorm2d(out)] if batch_norm else []
                layers += [make_activation(activation)]
            blocks.append(nn.Sequential(*layers, nn.MaxPool2d(2)))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.head = Float32Linear(width, num_classes)
        init_weights(self, init)
        self.sync_bn = sync_bn  # read by training.distributed.wrap_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)  # (B, C, H/8, W/8)
        return self.head(x.float().mean((2, 3)))  # (B, num_classes): pooled and classified in float32
