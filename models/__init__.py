"""Model families. Hydra builds them from ``configs/model/*.yaml`` through ``_target_``."""
import torch.nn as nn

from models.airbench import AirbenchNet
from models.cnn import CNN
from models.init import init_weights
from models.mlp import MLP
from models.resnet import ResNet

__all__ = ["AirbenchNet", "CNN", "MLP", "ResNet", "init_weights", "has_conv"]


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
