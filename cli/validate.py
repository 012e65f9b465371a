"""Config validation, once, before anything is built or loaded.

Each rule names a key, a predicate and what is allowed; the first failure raises ConfigError with one
line: ``trainer.precision='fp8' is invalid: allowed one of auto, fp32, bf16, fp16``. Optimizer rules
hold for ``optimizer.<key>`` and for a wrapped optimizer's ``optimizer.base.<key>`` (Lookahead). What
depends on the dataset's size (a warmup or milestone against the run's length in steps) is checked by
the schedule's constructor, which names the value the same way; so are model names (activation, init).
"""
import inspect
import re
import tempfile
from pathlib import Path

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from optimizers.base import HYPERPARAMETERS
from training.options import LOGGER_RULES, LOSS_SCALE, MONITOR_RULES, PRECISIONS, SanityOptions, TrainerOptions
from utils.errors import ConfigError
from utils.rules import BOOL, BOOL_OR_AUTO, Rule, integer, list_of, number, one_of, rules_of
from utils.suggest import nearest

_MISSING = object()
_DEVICE = Rule(lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
               "auto, cpu, cuda or cuda:N")
def _a_file(value) -> bool:
    return isinstance(value, str) and Path(value).is_file()


_RESUME = Rule(lambda v: v is None or v == "auto" or _a_file(v),
               "null, auto, or the path of an existing checkpoint file")

# The trainer's options state their own rules (training/options.py), the optimizers theirs (optimizers/base.py),
# the sanity checks theirs (training/sanity.py); the keys below are read by the command line and the builders.
RULES: dict[str, Rule] = {
    **rules_of(TrainerOptions, "trainer"),
    "trainer.seed": integer(0, 2**63 - 1),
    "trainer.deterministic": BOOL,
    "trainer.device": _DEVICE,
    "trainer.precision": one_of("auto", *PRECISIONS),
    "trainer.tf32": BOOL,
    "trainer.norm_fp32": BOOL,
    "trainer.loss_scale": LOSS_SCALE,
    "trainer.channels_last": BOOL_OR_AUTO,
    "trainer.sanity": one_of("run", "warn", "skip"),
    "trainer.resume": _RESUME,
    "trainer.pause_at_step": integer(1, nullable=True),
    "trainer.init_from": Rule(lambda v: v is None or _a_file(v), "null, or the path of an existing checkpoint file"),
    "trainer.progress_bar": BOOL_OR_AUTO,  # resolved to true or false for TrainerOptions
    "data.batch_size": integer(1),
    "data.eval_batch_size": integer(1),
    "data.train_subset": integer(1, nullable=True),
    "data.val_subset": integer(1, nullable=True),
    "data.test_subset": integer(1, nullable=True),
    "data.val_split": integer(0),
    "data.crop_padding": integer(0),
    "data.pad_mode": one_of("zeros", "reflect"),
    "data.flip": Rule(lambda v: isinstance(v, bool) or v == "alternating", "true, false or alternating"),
    "data.download": BOOL,
    "data.num_classes": integer(1),
    "data.in_channels": integer(1),
    "data.image_size": integer(1),
    "model.hidden_sizes": list_of(integer(1)),
    "model.channels": list_of(integer(1)),
    "model.width": integer(1),
    "model.depth": integer(8),
    "model.dropout": number(0, 1, hi_open=True),
    "model.batch_norm": BOOL,
    "model.skip": BOOL,
    "model.sync_bn": BOOL,
    "model.dirac": BOOL,
    "model.whiten_from_data": BOOL,
    "scheduler.warmup_steps": integer(0),
    "scheduler.warmup_epochs": number(0),
    "scheduler.warmup_start_factor": number(0, 1),
    "scheduler.warmup_mode": one_of("linear", "constant"),
    "scheduler.gamma": number(0, 1, lo_open=True),
    "scheduler.step_size_epochs": number(0),
    "scheduler.step_size_steps": integer(0),
    "scheduler.milestones": list_of(number(0)),
    "scheduler.milestones_unit": one_of("epoch", "step", "fraction"),
    "scheduler.min_lr": number(0),
    "scheduler.power": number(0, lo_open=True),
    "scheduler.pct_start": number(0, 1, lo_open=True, hi_open=True),
    "scheduler.div_factor": number(0, lo_open=True),
    "scheduler.final_div_factor": number(0, lo_open=True),
    "scheduler.anneal_strategy": one_of("cos", "linear"),
    **{f"logger.{key}": rule for key, rule in LOGGER_RULES.items()},
    **{f"monitor.{key}": rule for key, rule in MONITOR_RULES.items()},
    **rules_of(SanityOptions, "sanity"),
}

def validate(cfg: DictConfig, run_dir: str | Path | None = None) -> None:
    """Raise ConfigError for the first value that breaks a rule (keys a config lacks are not checked);
    with ``run_dir``, also create it and check that it is writable."""
    rules = dict(RULES)
    for prefix in ("optimizer", "optimizer.base"):
        rules.update({f"{prefix}.{key}": rule for key, rule in HYPERPARAMETERS.items()})
    for key, (ok, allowed) in rules.items():
        value = _value(cfg, key)
        if value is not _MISSING and not ok(value):
            raise ConfigError(f"{key}={_show(value)} is invalid: allowed {allowed}")
    _check_combinations(cfg)
    _check_trainer_keys(cfg)
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


def _check_trainer_keys(cfg: DictConfig) -> None:
    """Every key under ``trainer`` has a rule: one added with ``+`` (``+trainer.epochz=5``) would be ignored."""
    if "trainer" not in cfg:
        return
    known = [key for key in RULES if key.startswith("trainer.")]
    for key in _leaves(OmegaConf.to_container(cfg.trainer), "trainer."):
        if key not in known:
            near = nearest(key, known)
            raise ConfigError(f"{key}={_show(_value(cfg, key))} is invalid: the trainer has no such key"
                              + (f" (did you mean {' or '.join(near)}?)" if near else ""))


def _leaves(tree: dict, prefix: str) -> list[str]:
    """The dotted keys of a nested dict's leaves: {"clip": {"mode": ...}} -> ["<prefix>clip.mode"]."""
    return [leaf for key, value in tree.items()
            for leaf in (_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])]


def check_run_dir_overrides(overrides: list[str]) -> None:
    """An empty ``hydra.run.dir`` or ``hydra.sweep.dir`` would put the run's files into the current directory (the
    repository): refused before Hydra creates anything."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") and value.strip("'\" ") == "":
            raise ConfigError(f"{key}={value or repr('')} is invalid: allowed a folder name (an empty one would write "
                              f"the run into the current directory)")


# What the builders pass to a group's target themselves (cli/compose.py; data's placement: training/build.py)
SUPPLIED = {"model": (), "optimizer": ("params", "model"), "scheduler": ("optimizer", "steps_per_epoch", "total_steps")}


def check_known_keys(cfg: DictConfig, group: str, supplied: tuple[str, ...] = (), read: tuple[str, ...] = ()) -> None:
    """Every key of ``cfg.<group>`` is a parameter of its ``_target_`` other than those the builder ``supplied``, or
    one the builder ``read`` itself (a misspelt or ``+``-added key is refused, naming the nearest accepted one, not
    dropped); a nested node with a ``_target_`` of its own (Lookahead's ``base``) is checked the same way.
    Separate from ``validate``: it imports the target's module."""
    node = OmegaConf.select(cfg, group)
    accepted = [name for name in accepted_keys(get_method(node._target_)) if name not in supplied] + list(read)
    for key in node:
        if key.startswith("_"):
            continue
        if key not in accepted:
            nested = [f"{k}.{n}" for k in node if OmegaConf.is_dict(node[k]) and "_target_" in node[k]
                      for n in node[k] if not n.startswith("_")]  # Lookahead's base.lr for a stray lr
            near = nearest(key, accepted + nested)
            hint = f"did you mean {group}.{near[0]}? " if near else ""
            raise ConfigError(f"{group}.{key}={_show(_value(cfg, f'{group}.{key}'))} is invalid: {hint}allowed only "
                              f"the keys {', '.join(accepted)}")
        if OmegaConf.is_dict(node[key]) and "_target_" in node[key]:
            check_known_keys(cfg, f"{group}.{key}", supplied=("params",), read=read)


def accepted_keys(target) -> list[str]:
    """The keyword parameters ``target`` takes; a class whose ``__init__`` passes ``**kwargs`` on to its base
    class's (the schedules' ``**run``) takes that one's too."""
    names, classes = [], (target.__mro__ if inspect.isclass(target) else [target])
    for owner in classes:
        function = owner.__init__ if inspect.isclass(target) else owner
        if inspect.isclass(target) and "__init__" not in vars(owner):
            continue
        parameters = inspect.signature(function).parameters.values()
        names += [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.name not in ("self", *names)]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return names
    return names
def check_output_dir(path: str | Path) -> None:
    """Create ``path`` if needed and prove it writable, or a ConfigError naming ``hydra.run.dir``."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"hydra.run.dir={str(path)!r} is invalid ({e.strerror}): allowed a folder this user can "
                          f"create and write") from None
