"""What the engine is told: the ``trainer`` keys the Trainer's loop reads and the ``sanity`` group, each value
with its rule (utils/rules.py), checked when the options are made and reused by the config validator. Free of
torch, so a config can be checked before the training stack loads."""
from dataclasses import dataclass, fields

from utils.errors import require
from utils.rules import BOOL, Rule, check_fields, integer, number, one_of, option

PRECISIONS = ("fp32", "bf16", "fp16")  # training/precision.py
CLIP_MODES = ("none", "norm", "value", "agc", "autoclip")  # training/clipping.py, training/autoclip.py
TTA_MODES = ("none", "flip", "flip_translate")  # training/tta.py
CHECKS = ("data", "init_loss", "overfit", "gradient_flow", "loss_decrease")  # training/sanity.py
EMA_WARMUPS = ("ramp", "cubic", "none")  # training/ema.py


@dataclass(frozen=True)
class TrainerOptions:
    epochs: int = option(1, integer(1))
    max_steps: int | None = option(None, integer(1, nullable=True))  # stop after this many steps (None: epochs)
    clip_mode: str = option("none", one_of(*CLIP_MODES), key="clip.mode")
    clip_max: float = option(1.0, number(0, lo_open=True), key="clip.max")  # norm / value threshold, agc's lambda
    clip_percentile: float = option(10.0, number(0, 100), key="clip.percentile")  # autoclip's p
    clip_window: int | None = option(None, integer(1, nullable=True), key="clip.window")  # autoclip: last N norms
    label_smoothing: float = option(0.0, number(0, 1, hi_open=True))
    closure: str = option("per_batch", one_of("per_batch", "full_batch"))  # closure optimizers' batch
    on_nan: str = option("stop", one_of("stop", "skip"))
    # on_nan=skip: more than this fraction of an epoch's steps skipped is divergence, and stops the run
    max_skipped_fraction: float = option(0.5, number(0, 1))
    checkpoint_every_n_steps: int | None = option(None, integer(1, nullable=True))  # also mid-epoch
    keep_last_k: int = option(1, integer(1))
    progress_bar: bool = option(False, BOOL)
    tta: str = option("none", one_of(*TTA_MODES))
    val_every_n_epochs: int = option(1, integer(1))
    compile: bool = option(False, BOOL)
    ema_decay: float | None = option(None, number(0, 1, hi_open=True, nullable=True), key="ema.decay")  # 0/None: off
    ema_every: int = option(1, integer(1), key="ema.every")  # update the EMA every N optimizer steps
    ema_warmup: str = option("ramp", one_of(*EMA_WARMUPS), key="ema.warmup")
    ema_lookahead: bool = option(False, BOOL, key="ema.lookahead")  # reset the trained weights to the EMA
    profile_steps: int | None = option(None, integer(1, nullable=True))  # torch.profiler trace of N steps

    def __post_init__(self):
        check_fields(self, "trainer")


@dataclass(frozen=True)
class SanityOptions:
    """The ``sanity`` config group; see configs/sanity/default.yaml for what each value means."""
    checks: tuple[str, ...] = option(CHECKS, Rule(lambda v: isinstance(v, (list, tuple)) and set(v) <= set(CHECKS),
                                                  f"a list drawn from {list(CHECKS)}"))
    data_mean_tol: float = option(0.5, number(0, lo_open=True))
    data_std_tol: float = option(0.5, number(0, lo_open=True))
    init_loss_factor: float = option(6.0, number(1, lo_open=True))
    overfit_samples: int = option(16, integer(1))
    overfit_acc: float = option(0.95, number(0, 1, lo_open=True))
    overfit_steps: int = option(100, integer(1))
    overfit_loss_ratio: float = option(0.5, number(0, 1, lo_open=True))
    grad_explode_above: float = option(1e3, number(0, lo_open=True))
    grad_max_ratio: float = option(1e5, number(0, lo_open=True))
    decrease_steps: int = option(30, integer(1))
    decrease_min: float = option(0.05, number(0, 1, lo_open=True))
    heldout_samples: int = option(512, integer(1))

    def __post_init__(self):
        check_fields(self, "sanity")
        object.__setattr__(self, "checks", tuple(self.checks))

    @classmethod
    def parse(cls, options: dict) -> "SanityOptions":
        known = [f.name for f in fields(cls)]
        for key, value in options.items():
            require(key in known, f"sanity.{key}", value, f"only the keys {', '.join(known)}")
        return cls(**options)


# The other engine objects' config keys, stated here (free of torch) for the validator and checked again by each
# constructor: the logger (training/logger.py), the gradient monitor (training/monitor.py), the loss scale
# (training/precision.py: a static scale is a float32 tensor, so it must be a normal float32 number).
LOGGER_RULES = {"log_every_n_steps": integer(1), "tensorboard": BOOL, "histograms": BOOL,
                "flush_secs": number(0, 86400, lo_open=True)}  # TensorBoard's writer thread waits at most a day
MONITOR_RULES = {"every_n_steps": integer(0), "histograms_every_n_steps": integer(0), "vanish_below": number(0),
                 "explode_above": number(0, lo_open=True), "patience": integer(1)}
LOSS_SCALE = number(1e-38, 1e38, nullable=True)


def check_rules(rules: dict, prefix: str, values: dict) -> None:
    """Apply ``rules`` to the ``values`` they name, as ``<prefix>.<key>``."""
    for key, rule in rules.items():
        if key in values:
            rule.check(f"{prefix}.{key}", values[key])
