"""configs/optimizer/*.yaml: each builds an optimizer that takes a step (their comments: tests/test_configs.py)."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import optimizers

torch.set_num_threads(2)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "optimizer"
EXPECTED = {  # name: (class, lr)
    "sgd": (optimizers.SGD, 0.1), "momentum": (optimizers.SGD, 0.1), "nesterov": (optimizers.SGD, 0.1),
    "rmsprop": (optimizers.RMSprop, 0.001), "adagrad": (optimizers.Adagrad, 0.01), "adam": (optimizers.Adam, 0.001),
    "adamw": (optimizers.AdamW, 0.001), "radam": (optimizers.RAdam, 0.001), "lookahead": (optimizers.Lookahead, 0.1),
    "lbfgs": (optimizers.LBFGS, 1.0), "kfac": (optimizers.KFAC, 0.01), "hessian_free": (optimizers.HessianFree, 1.0),
}


def test_every_config_is_expected():
    assert sorted(path.stem for path in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_builds_and_steps(name):
    cls, lr = EXPECTED[name]
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    assert cfg.pop("decay_norm_and_bias") is False
    assert cfg._partial_ is True
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    optimizer = instantiate(cfg)(model.parameters(), **({"model": model} if cls.__dict__.get("needs_model") else {}))
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["lr"] == lr
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    first = closure().item()
    for _ in range(5 if name != "lookahead" else 10):
        optimizer.step(closure)
    assert closure().item() < first
