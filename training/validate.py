"""Config validation, once, before anything is built or loaded.

Each rule names a key, a predicate and what is allowed; the first failure raises ConfigError with one
line: ``trainer.precision='fp8' is invalid: allowed one of auto, fp32, bf16, fp16``. Optimizer rules
hold for ``optimizer.<key>`` and for a wrapped optimizer's ``optimizer.base.<key>`` (Lookahead). What
depends on the dataset's size (a warmup or milestone against the run's length in steps) is checked by
the schedule's constructor, which names the value the same way; so are model names (activation, init).
"""
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from utils.errors import ConfigError


Rule = tuple[Callable[[Any], bool], str]
_MISSING = object()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _one_of(*allowed) -> Rule:
    return (lambda v: any(v == a and type(v) is type(a) for a in allowed)), "one of " + ", ".join(map(str, allowed))


def _int(lo: int, hi: int | None = None, nullable: bool = False) -> Rule:
    ok = lambda v: (v is None and nullable) or (_is_int(v) and lo <= v and (hi is None or v <= hi))
    return ok, f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "") + (" or null" if nullable else "")


def _number(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False,
            nullable: bool = False) -> Rule:
    def ok(v):
        if v is None:
            return nullable
        return _is_number(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    span = (f"a number {'>' if lo_open else '>='} {lo}" if hi == math.inf else
            f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")
    return ok, span + (" or null" if nullable else "")


def _list_of(item: Rule, length: int | None = None) -> Rule:
    ok = lambda v: isinstance(v, list) and (length is None or len(v) == length) and all(item[0](x) for x in v)
    return ok, f"a list of {'' if length is None else f'{length} '}items, each {item[1]}"


_BOOL: Rule = (lambda v: isinstance(v, bool)), "true or false"
_BOOL_OR_AUTO: Rule = (lambda v: isinstance(v, bool) or v == "auto"), "true, false or auto"
_DEVICE: Rule = (lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
                 "auto, cpu, cuda or cuda:N")
_RESUME: Rule = (lambda v: v is None or v == "auto" or (isinstance(v, str) and Path(v).is_file()),
                 "null, auto, or the path of an existing checkpoint file")

RULES: dict[str, Rule] = {
    "trainer.epochs": _int(1),
    "trainer.max_steps": _int(1, nullable=True),
    "trainer.seed": _int(0, 2**63 - 1),
    "trainer.deterministic": _BOOL,
    "trainer.device": _DEVICE,
    "trainer.precision": _one_of("auto", "fp32", "bf16", "fp16"),
    "trainer.tf32": _BOOL,
    "trainer.loss_scale": _number(0, lo_open=True, nullable=True),
    "trainer.clip.mode": _one_of("none", "norm", "value", "agc", "autoclip"),
    "trainer.clip.max": _number(0, lo_open=True),
    "trainer.clip.percentile": _number(0, 100),
    "trainer.clip.window": _int(1, nullable=True),
    "trainer.label_smoothing": _number(0, 1, hi_open=True),
    "trainer.tta": _one_of("none", "flip", "flip_translate"),
    "trainer.val_every_n_epochs": _int(1),
    "trainer.channels_last": _BOOL_OR_AUTO,
    "trainer.compile": _BOOL,
    "trainer.profile_steps": _int(1, nullable=True),
    "trainer.closure": _one_of("per_batch", "full_batch"),
    "trainer.on_nan": _one_of("stop", "skip"),
    "trainer.max_skipped_fraction": _number(0, 1),
    "trainer.sanity": _one_of("run", "warn", "skip"),
    "trainer.resume": _RESUME,
    "trainer.pause_at_step": _int(1, nullable=True),
    "trainer.init_from": ((lambda v: v is None or (isinstance(v, str) and Path(v).is_file())),
                          "null, or the path of an existing checkpoint file"),
    "trainer.checkpoint_every_n_steps": _int(1, nullable=True),
    "trainer.keep_last_k": _int(1),
    "trainer.progress_bar": _BOOL_OR_AUTO,
    "data.batch_size": _int(1),
    "data.eval_batch_size": _int(1),
    "data.train_subset": _int(1, nullable=True),
    "data.val_subset": _int(1, nullable=True),
    "data.test_subset": _int(1, nullable=True),
    "data.val_split": _int(0),
    "data.crop_padding": _int(0),
    "data.flip": ((lambda v: isinstance(v, bool) or v == "alternating"), "true, false or alternating"),
    "data.download": _BOOL,
    "data.num_classes": _int(1),
    "data.in_channels": _int(1),
    "data.image_size": _int(1),
    "model.hidden_sizes": _list_of(_int(1)),
    "model.channels": _list_of(_int(1)),
    "model.width": _int(1),
    "model.depth": _int(8),
    "model.dropout": _number(0, 1, hi_open=True),
    "model.batch_norm": _BOOL,
    "model.skip": _BOOL,
    "model.sync_bn": _BOOL,
    "model.dirac": _BOOL,
    "model.whiten_from_data": _BOOL,
    "scheduler.warmup_steps": _int(0),
    "scheduler.warmup_epochs": _number(0),
    "scheduler.warmup_start_factor": _number(0, 1),
    "scheduler.warmup_mode": _one_of("linear", "constant"),
    "scheduler.gamma": _number(0, 1, lo_open=True),
    "scheduler.step_size_epochs": _number(0),
    "scheduler.step_size_steps": _int(0),
    "scheduler.milestones": _list_of(_number(0)),
    "scheduler.milestones_unit": _one_of("epoch", "step", "fraction"),
    "scheduler.min_lr": _number(0),
    "scheduler.power": _number(0, lo_open=True),
    "scheduler.pct_start": _number(0, 1, lo_open=True, hi_open=True),
    "scheduler.div_factor": _number(0, lo_open=True),
    "scheduler.final_div_factor": _number(0, lo_open=True),
    "scheduler.anneal_strategy": _one_of("cos", "linear"),
    "logger.log_every_n_steps": _int(1),
    "logger.tensorboard": _BOOL,
    "logger.histograms": _BOOL,
    "logger.flush_secs": _number(0, lo_open=True),
}

OPTIMIZER_RULES: dict[str, Rule] = {
    "lr": _number(0),
    "momentum": _number(0, 1, hi_open=True),
    "dampening": _number(0, 1),
    "weight_decay": _number(0),
    "eps": _number(0),
    "alpha": _number(0, 1),
    "betas": _list_of(_number(0, 1, hi_open=True), length=2),
    "lr_decay": _number(0),
    "initial_accumulator_value": _number(0),
    "k": _int(1),
    "max_iter": _int(1),
    "max_eval": _int(1, nullable=True),
    "history_size": _int(1),
    "tolerance_grad": _number(0),
    "tolerance_change": _number(0),
    "line_search_fn": _one_of(None, "strong_wolfe"),
    **{flag: _BOOL for flag in ("nesterov", "maximize", "foreach", "lr_in_velocity", "decay_norm_and_bias",
                                "centered", "eps_inside_sqrt", "amsgrad", "decoupled_weight_decay")},
}


def validate(cfg: DictConfig, run_dir: str | Path | None = None) -> None:
    """Raise ConfigError for the first value that breaks a rule (keys a config lacks are not checked);
    with ``run_dir``, also create it and check that it is writable."""
    rules = dict(RULES)
    for prefix in ("optimizer", "optimizer.base"):
        rules.update({f"{prefix}.{key}": rule for key, rule in OPTIMIZER_RULES.items()})
    for key, (ok, allowed) in rules.items():
        value = _value(cfg, key)
        if value is not _MISSING and not ok(value):
            raise ConfigError(f"{key}={_show(value)} is invalid: allowed {allowed}")
    _check_combinations(cfg)
    if run_dir is not None:
        check_output_dir(run_dir)


def _value(cfg: DictConfig, key: str):
    try:
        value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key} is invalid ({str(e).splitlines()[0]}): allowed a value, "
                          f"or an interpolation ${{...}} of a key that exists") from None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _show(value) -> str:
    return repr(value)[:80]


def _check_combinations(cfg: DictConfig) -> None:
    """Rules between keys: each message names both."""
    t = cfg.trainer
    if t.loss_scale is not None and t.precision != "fp16":
        raise ConfigError(f"trainer.loss_scale={t.loss_scale!r} is invalid with trainer.precision={t.precision!r}: "
                          f"allowed only with fp16 (bf16 and fp32 need no loss scaling)")
    for prefix in ("optimizer", "optimizer.base"):
        momentum, dampening = _value(cfg, f"{prefix}.momentum"), _value(cfg, f"{prefix}.dampening")
        if _value(cfg, f"{prefix}.nesterov") is True and (momentum in (0, _MISSING) or dampening not in (0, _MISSING)):
            raise ConfigError(f"{prefix}.nesterov=True is invalid with {prefix}.momentum={momentum!r} and "
                              f"{prefix}.dampening={dampening!r}: allowed only with momentum > 0 and dampening 0")
    lr = next((v for v in (_value(cfg, "optimizer.lr"), _value(cfg, "optimizer.base.lr")) if v is not _MISSING), None)
    min_lr = _value(cfg, "scheduler.min_lr")
    if lr is not None and min_lr is not _MISSING and min_lr > lr:
        raise ConfigError(f"scheduler.min_lr={min_lr!r} is invalid with the optimizer's lr={lr!r}: "
                          f"allowed a number in [0, {lr}]")
    root, download = _value(cfg, "data.root"), _value(cfg, "data.download")
    if isinstance(root, str) and download is False and not Path(root).is_dir():
        raise ConfigError(f"data.root={root!r} is invalid: no such folder ({Path(root).resolve()}); allowed a folder "
                          f"holding the dataset: set data.root=<folder>, or export DATA_ROOT=<folder> (the default "
                          f"root; without it ../shared/data), or data.download=true")


def check_output_dir(path: str | Path) -> None:
    """Create ``path`` if needed and prove it writable, or a ConfigError naming ``hydra.run.dir``."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"hydra.run.dir={str(path)!r} is invalid ({e.strerror}): allowed a folder this user can "
                          f"create and write") from None
