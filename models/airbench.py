"""A wide, shallow conv net for fast CIFAR-10 training (KellerJordan/cifar10-airbench, ``airbench94.py``).

    whiten  conv 2x2, 3 -> 24, frozen: +-the eigenvectors of the 2x2 patch covariance (init_from_data)  -> GELU
    block1  conv3x3 24 -> 64    -> maxpool 2 -> BN -> GELU -> conv3x3 64 -> 64    -> BN -> GELU    (31 -> 15 px)
    block2  conv3x3 64 -> 256   -> maxpool 2 -> BN -> GELU -> conv3x3 256 -> 256  -> BN -> GELU    (15 -> 7 px)
    block3  conv3x3 256 -> 256  -> maxpool 2 -> BN -> GELU -> conv3x3 256 -> 256  -> BN -> GELU    (7 -> 3 px)
    head    global max pool -> linear 256 -> 10 (no bias) -> x 1/9

1.97M parameters, 0.24 GFLOP per 32x32 image forward. BN layers learn a shift only (no scale); the first ``cin``
filters of each 3x3 conv start as the identity (dirac; ``dirac=False``: PyTorch's default init only).
``whiten_from_data=False`` leaves the 2x2 layer at PyTorch's default init and trains it like the others. airbench raises the LR of BN shifts 64x with a separate
parameter group; here each shift is stored divided by ``bias_scale`` = 8 and multiplied back in ``forward``, which
under SGD moves it 8^2 = 64 times faster with the optimizer's ordinary parameter groups.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ShiftBatchNorm(nn.BatchNorm2d):
    """Batch norm with a learned shift only; the stored shift is the effective one divided by ``bias_scale``."""

    def __init__(self, channels: int, momentum: float, bias_scale: float):
        super().__init__(channels, eps=1e-12, momentum=momentum, affine=False)
        self.shift = nn.Parameter(torch.zeros(channels))
        self.bias_scale = bias_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.shift * self.bias_scale,
                            self.training, self.momentum, self.eps)


def conv3x3(cin: int, cout: int, dirac: bool) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
    if dirac:
        with torch.no_grad():
            nn.init.dirac_(conv.weight[:cin])  # the first cin filters pass the input through
    return conv


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, bn_momentum: float, bias_scale: float, dirac: bool = True):
        super().__init__()
        self.conv1, self.conv2 = conv3x3(cin, cout, dirac), conv3x3(cout, cout, dirac)
        self.norm1 = ShiftBatchNorm(cout, bn_momentum, bias_scale)
        self.norm2 = ShiftBatchNorm(cout, bn_momentum, bias_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))  # (B, cout, H/2, W/2)
        return F.gelu(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    def __init__(self, *, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256),
                 bn_momentum: float = 0.4, bias_scale: float = 8.0, logit_scale: float = 1 / 9,
                 whiten_eps: float = 5e-4, whiten_from_data: bool = True, dirac: bool = True):
        super().__init__()
        whiten_width = 2 * in_channels * 2 * 2
        self.whiten = nn.Conv2d(in_channels, whiten_width, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(not whiten_from_data)
        # set from the data, never trained (the sanity checks then expect no gradient)
        self.frozen_parameters = ("whiten.weight",) if whiten_from_data else ()
        cins = (whiten_width, *widths[:-1])
        self.blocks = nn.Sequential(*(ConvGroup(cin, cout, bn_momentum, bias_scale, dirac)
                                      for cin, cout in zip(cins, widths)))
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.logit_scale, self.whiten_eps, self.whiten_from_data = logit_scale, whiten_eps, whiten_from_data

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                       samples: int = 5000) -> None:
        """Set the whitening filters from ``samples`` evenly spaced training images (uint8 (N, C, H, W), normalised
        here with the loader's ``mean`` and ``std``): for each eigenpair (l, v) of the covariance of their 2x2
        patches, the filters +-v / sqrt(l + eps). Nothing with ``whiten_from_data=False``."""
        if not self.whiten_from_data:
            return
        c, k = self.whiten.in_channels, self.whiten.kernel_size[0]
        x = images[::max(1, len(images) // samples)].float() / 255  # evenly spaced: folders are sorted by class
        x = (x - x.new_tensor(mean).view(1, c, 1, 1)) / x.new_tensor(std).view(1, c, 1, 1)
        patches = x.unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H-k+1, W-k+1, k, k)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + self.whiten_eps)[:, None]).reshape(-1, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.gelu(self.whiten(x)))  # (B, 256, 3, 3)
        return self.head(x.amax((2, 3))) * self.logit_scale  # (B, num_classes)
