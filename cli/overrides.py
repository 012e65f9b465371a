"""A checkpoint's saved config with what the command line set: ``evaluate.py`` and the checkpoint tools
(``analysis/loading.py``) score or analyse a checkpoint with its own settings, except where the user said otherwise.
"""
import os
from collections.abc import Collection, Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from training import checkpoint
from utils.errors import require

INSTEAD = "give checkpoint=<a run's checkpoints/best.pt or last.pt>"


def load_with_config(path: str | os.PathLike) -> tuple[dict, dict]:
    """The checkpoint at ``path`` (the ``checkpoint=`` key) and the resolved config saved in it, or a one-line
    error: no such file, an unreadable checkpoint (training/checkpoint.py's ``load``), or one saved without config."""
    require(Path(path).is_file(), "checkpoint", str(path), "the path of an existing checkpoint file (a run's "
            "checkpoints/best.pt or last.pt)")
    state = checkpoint.load(path, instead=INSTEAD)
    saved = checkpoint.saved_config(state)
    if not saved:
        raise checkpoint.CheckpointError(f"{path} holds no config to rebuild its model and data from")
    return state, saved


def apply_overrides(saved: DictConfig, cfg: DictConfig, overrides: Sequence[str],
                    sections: Collection[str]) -> list[Override]:
    """Set in ``saved`` each key, or group option (``data=cifar10``), of ``sections`` that ``overrides`` set, to its
    value in ``cfg``, the config Hydra composed from them; return the other overrides."""
    others = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key.split(".")[0] not in sections:
            others.append(override)
            continue
        value = OmegaConf.select(cfg, key)
        OmegaConf.update(saved, key, OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value)
                         else value, merge=False)
    return others
