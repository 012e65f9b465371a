"""Config validation, once, before anything is built or loaded.

Each rule names a key, a predicate, and what is allowed; the first failure raises ConfigError with
one line: ``trainer.precision='fp8' is invalid: allowed fp32, bf16, fp16, auto``. The optimizer and
schedule classes validate their own arguments in their constructors (ValueError naming the value).
"""
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A bad config value: the message names the key, the value and what is allowed."""


_MISSING = object()


def _one_of(*allowed):
    return (lambda v: v in allowed), "one of " + ", ".join(map(str, allowed))


def _int(lo: int, hi: float = float("inf"), nullable: bool = False):
    ok = lambda v: (v is None and nullable) or (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi)
    return ok, f"an integer >= {lo}" + (f" and <= {hi}" if hi != float("inf") else "") + (" or null" if nullable else "")


def _number(lo: float, hi: float = float("inf"), lo_open: bool = False, hi_open: bool = False):
    def ok(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    return ok, f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


_BOOL = (lambda v: isinstance(v, bool)), "true or false"
_BOOL_OR_AUTO = (lambda v: isinstance(v, bool) or v == "auto"), "true, false or auto"

RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "trainer.epochs": _int(1),
    "trainer.max_steps": _int(1, nullable=True),
    "trainer.seed": _int(0, 2**63 - 1),
    "trainer.deterministic": _BOOL,
    "trainer.precision": _one_of("auto", "fp32", "bf16", "fp16"),
    "trainer.loss_scale": ((lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)),
                           "a number > 0, or null for dynamic scaling"),
    "trainer.clip.mode": _one_of("none", "norm", "value", "agc"),
    "trainer.clip.max": _number(0, lo_open=True),
    "trainer.label_smoothing": _number(0, 1, hi_open=True),
    "trainer.channels_last": _BOOL_OR_AUTO,
    "trainer.compile": _BOOL,
    "trainer.closure": _one_of("per_batch", "full_batch"),
    "trainer.on_nan": _one_of("stop", "skip"),
    "trainer.sanity": _one_of("run", "warn", "skip"),
    "trainer.checkpoint_every_n_steps": _int(1, nullable=True),
    "trainer.keep_last_k": _int(1),
    "trainer.progress_bar": _BOOL_OR_AUTO,
    "data.batch_size": _int(1),
    "data.eval_batch_size": _int(1),
    "data.train_subset": _int(1, nullable=True),
    "data.val_subset": _int(1, nullable=True),
    "data.crop_padding": _int(0),
    "data.flip": _BOOL,
    "data.download": _BOOL,
    "optimizer.lr": _number(0),
    "optimizer.momentum": _number(0, 1, hi_open=True),
    "optimizer.weight_decay": _number(0),
    "optimizer.eps": _number(0),
    "logger.log_every_n_steps": _int(1),
}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that breaks a rule (keys a config lacks are not checked)."""
    for key, (ok, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is not _MISSING and not ok(value):
            raise ConfigError(f"{key}={value!r} is invalid: allowed {allowed}")
    betas = OmegaConf.select(cfg, "optimizer.betas", default=None)
    if betas is not None:
        if len(betas) != 2 or not all(_number(0, 1, hi_open=True)[0](b) for b in betas):
            raise ConfigError(f"optimizer.betas={list(betas)!r} is invalid: allowed two numbers in [0, 1)")
    if cfg.trainer.loss_scale is not None and cfg.trainer.precision != "fp16":
        raise ConfigError(f"trainer.loss_scale={cfg.trainer.loss_scale!r} is invalid with trainer.precision="
                          f"{cfg.trainer.precision!r}: allowed only with fp16 (bf16 and fp32 need no loss scaling)")
