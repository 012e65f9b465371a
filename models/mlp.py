"""Multi-layer perceptrons, including the deep narrow nets of gradient-flow studies."""
from typing import Sequence

import torch
import torch.nn as nn

from models.init import init_weights
from models.layers import Float32Linear, activation as make_activation
from utils.errors import require


class MLP(nn.Module):
    """Flatten -> [Linear -> (BatchNorm1d) -> act -> (Dropout)] x len(hidden_sizes) -> Linear.

    Hidden blocks are ``self.layers[i]`` so per-layer gradient norms read as layers.0, layers.1, ...
    """

    def __init__(self, *, in_channels: int, image_size: int, num_classes: int,
                 hidden_sizes: Sequence[int] = (512, 256), activation: str = "relu",
                 batch_norm: bool = False, dropout: float = 0.0, init: str = "default", sync_bn: bool = False):
        super().__init__()
        require(0 <= dropout < 1, "model.dropout", dropout, "a number in [0, 1)")
        widths = [in_channels * image_size * image_size, *hidden_sizes]
        self.layers = nn.ModuleList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            block = [nn.Linear(fan_in, fan_out, bias=not batch_norm)]
            block += [nn.BatchNorm1d(fan_out)] if batch_norm else []
            block += [make_activation(activation)]
            block += [nn.Dropout(dropout)] if dropout else []
            self.layers.append(nn.Sequential(*block))
        self.head = Float32Linear(widths[-1], num_classes)
        init_weights(self, init)
        self.sync_bn = sync_bn  # read by training.distributed.wrap_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, C*H*W)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)  # (B, num_classes)
