"""Optimizers written from their update equations, drop-in for torch.optim; LR schedules."""
from functools import partial

import torch
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from optimizers.adagrad import Adagrad
from optimizers.adam import Adam, AdamW
from optimizers.hessian_free import HessianFree
from optimizers.kfac import KFAC
from optimizers.lbfgs import LBFGS
from optimizers.lookahead import Lookahead
from optimizers.newton import DampedNewton
from optimizers.param_groups import param_groups
from optimizers.radam import RAdam
from optimizers.rmsprop import RMSprop
from optimizers.sgd import SGD

__all__ = ["SGD", "RMSprop", "Adagrad", "Adam", "AdamW", "RAdam", "Lookahead", "LBFGS", "KFAC", "HessianFree", "DampedNewton", "build", "param_groups"]


def build(cfg: DictConfig | dict, model: nn.Module) -> torch.optim.Optimizer:
    """Instantiate ``cfg`` (a ``_partial_`` optimizer config) over ``model``'s parameter groups.

    ``decay_norm_and_bias`` is read here, not passed on. Closure optimizers (L-BFGS) take one
    group of every parameter, as torch's does. Optimizers that hook the network (``needs_model``:
    K-FAC) also get ``model``.
    """
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    decay_norm_and_bias = cfg.pop("decay_norm_and_bias", False)
    factory = instantiate(cfg, _convert_="all")  # plain lists in param_groups: a weights-only checkpoint
    if getattr(factory.func, "needs_model", False):
        factory = partial(factory, model=model)
    if getattr(factory.func, "requires_closure", False):
        return factory([p for p in model.parameters() if p.requires_grad])
    return factory(param_groups(model, decay_norm_and_bias))
