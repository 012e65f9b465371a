"""Weight initialisation schemes, applied to every Linear and Conv layer.

kaiming (He et al. 2015):  W ~ N(0, 2 / fan_in)           keeps ReLU activations' variance constant
xavier (Glorot & Bengio):  W ~ N(0, 2 / (fan_in + fan_out)) keeps variance for tanh/sigmoid-like units
orthogonal (Saxe et al.):  W = Q of a QR decomposition       preserves norms through linear layers
Biases start at zero for every scheme but ``default`` (PyTorch's own per-layer defaults).
"""
import torch.nn as nn

from utils.errors import ConfigError

SCHEMES = {
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "xavier_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    "orthogonal": nn.init.orthogonal_,
}


def init_weights(model: nn.Module, scheme: str = "default") -> nn.Module:
    if scheme == "default":
        return model
    if scheme not in SCHEMES:
        raise ConfigError(f"model.init={scheme!r} is invalid: allowed one of default, {', '.join(SCHEMES)}")
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            SCHEMES[scheme](module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
