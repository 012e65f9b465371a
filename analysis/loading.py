"""What the checkpoint tools analyse: a model (rebuilt from a checkpoint's own saved config) and fixed batches.

With ``checkpoint=<path>`` the model is built from the ``model`` section of the config saved inside the
checkpoint, so no model overrides need repeating, and the tools' ``main`` takes the data from it too
(``with_checkpoint_data``): the images it was trained on, split and subsets as then (so the same normalisation);
a data key or ``data=<option>`` on the command line still wins (``data.root=<folder>`` finds moved data). Without
a checkpoint the model is the one a training run with ``trainer.seed`` starts from. Everything here runs in
float32 (no autocast): the tools measure the loss.
"""
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from cli.overrides import apply_overrides, load_with_config
from data import BatchLoader, ImageData, subset
from training import checkpoint
from utils.errors import require
from utils.seed import seed_everything

Batches = list[tuple[torch.Tensor, torch.Tensor]]
DATA_KEYS = ("source", "num_classes", "in_channels", "image_size")
log = logging.getLogger(__name__)


def initial_model(model_cfg: DictConfig, seed: int) -> nn.Module:
    """The weights a run with this seed starts from: ``build_trainer`` seeds, then builds the model first."""
    seed_everything(seed)
    return instantiate(model_cfg)


def with_checkpoint_data(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``cfg`` with the ``data`` section saved in ``cfg.checkpoint``, except each data key (or ``data=<option>``)
    that the command line's ``overrides`` set; ``cfg`` itself when no checkpoint is given."""
    if OmegaConf.is_missing(cfg, "checkpoint") or cfg.checkpoint is None:
        return cfg
    data = OmegaConf.create({"data": load_with_config(cfg.checkpoint)[1]["data"]})
    apply_overrides(data, cfg, overrides, ("data",))
    log.info("data: %s at %s (the checkpoint's; a data key on the command line wins)", data.data.source, data.data.root)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.data = data.data
    return cfg


def load_checkpoint_model(path: str | Path, data_cfg: DictConfig | None = None) -> tuple[nn.Module, DictConfig]:
    """The checkpoint's model with its weights, and the resolved config it was trained with; ``data_cfg``, when
    given, must describe the same images (``DATA_KEYS``)."""
    state, saved = load_with_config(path)
    saved = OmegaConf.create(saved)
    if data_cfg is not None:
        for key in DATA_KEYS:
            require(data_cfg[key] == saved.data[key], f"data.{key}", data_cfg[key],
                    f"{saved.data[key]!r}, what {path} was trained on (leave data= out: the tool then reads its data)")
    model = instantiate(saved.model)
    checkpoint.check_model_matches(state, model, path)
    model.load_state_dict(state["model"])
    return model, saved


def model_for(cfg: DictConfig) -> tuple[nn.Module, DictConfig]:
    """``cfg.checkpoint``'s model and saved config, or else ``cfg.model`` freshly initialised and ``cfg``."""
    if cfg.checkpoint is None:
        return initial_model(cfg.model, cfg.trainer.seed), cfg
    return load_checkpoint_model(cfg.checkpoint, cfg.data)


def fixed_batches(data: ImageData, n: int, batch_size: int, device: torch.device | str = "cpu") -> Batches:
    """The first ``n`` training examples of the fixed permutation (``data.subset``), in order, without
    augmentation, normalised as in training: the same set every time the tool runs."""
    train = data.train
    require(1 <= n <= train.num_examples, "samples", n, f"an integer in [1, {train.num_examples}]")
    images, labels = subset(train.images, train.labels, n)
    plain = BatchLoader(images, labels, batch_size=batch_size, mean=data.mean, std=data.std, shuffle=False,
                        drop_last=False)
    return [(x.to(device), y.to(device)) for x, y in plain]


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Batches) -> float:
    """(1/N) sum_i CE(model(x_i), y_i) over every example, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    total = sum(F.cross_entropy(model(x), y, reduction="sum").double() for x, y in batches)
    model.train(was_training)
    return float(total) / sum(len(y) for _, y in batches)
