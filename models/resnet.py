"""CIFAR ResNets of depth 6n+2 (He et al. 2016, "Deep Residual Learning", section 4.2).

Three stages of n basic blocks at 16, 32, 64 channels on 32x32, 16x16, 8x8 maps; option-A
shortcuts (subsample and zero-pad channels, no parameters), global average pooling, a linear head.

| model      | n  | layers | params    | paper error (%) |
|------------|----|--------|-----------|-----------------|
| resnet20   | 3  | 20     | 269,722   | 8.75            |
| resnet32   | 5  | 32     | 464,154   | 7.51            |
| resnet44   | 7  | 44     | 658,586   | 7.17            |
| resnet56   | 9  | 56     | 853,018   | 6.97            |
| resnet110  | 18 | 110    | 1,727,962 | 6.43            |

``skip=False`` gives the paper's "plain" twin (the degradation experiment); ``batch_norm=False``
drops normalisation (convolutions then get biases).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.init import init_weights
from models.layers import Float32Linear, activation as make_activation
from utils.errors import require


class PadShortcut(nn.Module):
    """Option A: take every other pixel and zero-pad the new channels (a module, so it pickles)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]  # (B, C, H/2, W/2)
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> act -> conv3x3 -> BN, plus the shortcut, -> act."""

    def __init__(self, cin: int, cout: int, stride: int, *, skip: bool, batch_norm: bool, activation: str):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not batch_norm)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not batch_norm)
        self.bn2 = norm(cout)
        self.act1, self.act2 = make_activation(activation), make_activation(activation)
        self.skip = skip
        self.shortcut = PadShortcut(cout - cin) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.skip:
            out = out + self.shortcut(x)
        return self.act2(out)


class ResNet(nn.Module):
    def __init__(self, *, depth: int = 20, in_channels: int = 3, num_classes: int = 10, skip: bool = True,
                 batch_norm: bool = True, activation: str = "relu", width: int = 16,
                 init: str = "kaiming_normal", sync_bn: bool = False):
        super().__init__()
        require(depth >= 8 and (depth - 2) % 6 == 0, "model.depth", depth,
                "a CIFAR ResNet depth 6n+2 (20, 32, 44, 56, 110, ...)")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(width) if batch_norm else nn.Identity()
        self.act = make_activation(activation)
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride, skip=skip, batch_norm=batch_norm, activation=activation))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = Float32Linear(cin, num_classes)
        init_weights(self, init)
        self.sync_bn = sync_bn  # read by training.distributed.wrap_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))  # (B, 16, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, 8, 8)
        return self.fc(x.float().mean((2, 3)))  # (B, num_classes): pooled and classified in float32
