"""Learning-rate schedules stepped per iteration, each a pure function of the global step (timm style).

Notation: t the global iteration (0 = first update), T = ``total_steps``, W the warmup length in steps,
η₀ a param group's base LR (``group["initial_lr"]``), f = ``warmup_start_factor``.

    warmup, t < W:   linear    η = η₀ (f + (1 - f) t / W)
                     constant  η = η₀ f
    after,  t >= W:  the shape's η(t), below

Two clocks, so that each shape means what recipes say:
- milestone shapes (step, multistep) read the global step t: "LR /10 at 32k and 48k iterations" counts the warmup
  iterations too. Their first drop may not come before warmup ends.
- annealing shapes (exponential, polynomial, cosine) read the time since warmup, s = t - W, over S = T - W: they start
  at η₀ when warmup ends and reach their end value at t = T (torch's LinearLR + SequentialLR layout).
Steps past the end of the run hold the final value. A milestone at or past the run's end is reported (a warning:
that drop never happens); ``milestones_unit=fraction`` places milestones at fractions of the run, whatever its length.

Resuming with another run length (``trainer.epochs``): a schedule whose LR does not depend on T (``LENGTH_FREE``:
constant, step, multistep in epochs or steps, exponential) continues unchanged; one laid out over T (cosine,
polynomial, one-cycle, fractional milestones) would be re-stretched and jump, so that resume is refused.

The loop owns the step counter and calls ``step_update(step)`` before each update; no ``last_epoch`` to restore.
"""
import logging
import math
from bisect import bisect_right
from collections.abc import Sequence

import torch

from utils.errors import ConfigError, require

log = logging.getLogger(__name__)
_WARMUP_MODES = ("linear", "constant")
_UNITS = ("step", "epoch", "fraction")
_ANNEAL = ("cos", "linear")


def _require(ok: bool, name: str, value, allowed: str) -> None:
    require(ok, f"scheduler.{name}", value, allowed)


class LRSchedule:
    """Warmup, then the decay shape of a subclass (``_decayed``). Not used directly.

    ``warmup_steps`` or ``warmup_epochs`` (rounded to steps) gives W; ``warmup_mode`` is ``linear`` (ramp from f·η₀
    to η₀) or ``constant`` (hold f·η₀, then jump to η₀: the ResNet-110 recipe, 0.01 for 400 iterations then 0.1).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, total_steps: int,
                 warmup_steps: int = 0, warmup_epochs: float = 0.0, warmup_start_factor: float = 0.1,
                 warmup_mode: str = "linear"):
        _require(steps_per_epoch >= 1, "steps_per_epoch", steps_per_epoch, "an integer >= 1")
        _require(total_steps >= 1, "total_steps", total_steps, "an integer >= 1")
        _require(warmup_steps >= 0, "warmup_steps", warmup_steps, "a step count >= 0")
        _require(warmup_epochs >= 0, "warmup_epochs", warmup_epochs, "an epoch count >= 0")
        _require(not (warmup_steps and warmup_epochs), "warmup_epochs", warmup_epochs,
                 f"0 when warmup_steps={warmup_steps} is given (set one of the two)")
        _require(0 <= warmup_start_factor <= 1, "warmup_start_factor", warmup_start_factor, "a value in [0, 1]")
        _require(warmup_mode in _WARMUP_MODES, "warmup_mode", warmup_mode, f"one of {_WARMUP_MODES}")
        self.warmup_steps = int(warmup_steps) or round(warmup_epochs * steps_per_epoch)
        shorter = f"a warmup shorter than the run's total_steps={total_steps}"
        if warmup_steps:
            _require(self.warmup_steps < total_steps, "warmup_steps", warmup_steps, shorter)
        else:
            _require(self.warmup_steps < total_steps, "warmup_epochs", warmup_epochs,
                     f"{shorter} (here {self.warmup_steps} steps of {steps_per_epoch} per epoch)")
        self.optimizer = optimizer
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.warmup_start_factor, self.warmup_mode = warmup_start_factor, warmup_mode
        self.base_lrs = [float(g.setdefault("initial_lr", float(g["lr"]))) for g in optimizer.param_groups]
        self.hparams = dict(steps_per_epoch=steps_per_epoch, total_steps=total_steps, warmup_steps=self.warmup_steps,
                            warmup_start_factor=warmup_start_factor, warmup_mode=warmup_mode)

    def lr_at(self, step: int) -> list[float]:
        """LR of each param group at global iteration ``step`` (0-based)."""
        _require(step >= 0, "step", step, "a global iteration >= 0")
        t = min(step, self.total_steps)
        if t < self.warmup_steps:
            f = self.warmup_start_factor
            if self.warmup_mode == "linear":
                f += (1 - f) * t / self.warmup_steps
            return [lr * f for lr in self.base_lrs]
        return [self._decayed(lr, t) for lr in self.base_lrs]

    def step_update(self, step: int) -> None:
        """Write ``lr_at(step)`` into the optimizer's param groups (in place for tensor LRs)."""
        for group, lr in zip(self.optimizer.param_groups, self.lr_at(step), strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def state_dict(self) -> dict:
        return {"schedule": type(self).__name__, "hparams": dict(self.hparams), "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the base LRs after checking the saved schedule is this one (same shape and hyperparameters)."""
        saved = {"schedule": state["schedule"], **state["hparams"]}
        ours = {"schedule": type(self).__name__, **self.hparams}
        diff = {k: (saved.get(k), ours.get(k)) for k in saved.keys() | ours.keys() if saved.get(k) != ours.get(k)}
        if diff.keys() == {"total_steps"}:
            self._check_new_length(state)
        elif diff:
            raise ConfigError(f"scheduler state does not match this schedule; (saved, configured) per key: {diff}")
        _require(len(state["base_lrs"]) == len(self.base_lrs), "len(base_lrs)", len(state["base_lrs"]),
                 f"one base LR per param group ({len(self.base_lrs)})")
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = lr

    def length_free(self) -> bool:
        """Whether lr_at(t) is the same whatever ``total_steps`` is (below the end): then a run may go on longer."""
        return False

    def _check_new_length(self, state: dict) -> None:
        """A resume under another run length: fine when the LR does not depend on it, else a ConfigError saying
        how the LR would jump."""
        saved_total, name = state["hparams"]["total_steps"], type(self).__name__
        if self.length_free():
            log.info("%s continues from its saved length of %d steps to %d: its LR does not depend on the run's "
                     "length, so every step keeps the LR it had", name, saved_total, self.total_steps)
            return
        end = saved_total - 1  # the last step the saved run trained
        ended = type(self)(self.optimizer, **state["hparams"]).lr_at(end)[0]
        raise ConfigError(
            f"the run's length changed from {saved_total} to {self.total_steps} steps (trainer.epochs or "
            f"max_steps), and {name} lays its LR out over the length: re-stretched, the LR would jump from "
            f"{ended:.3g} (step {end}) to {self.lr_at(saved_total)[0]:.3g} (step {saved_total}); to train these "
            f"weights longer start a new run from them with trainer.init_from=<this checkpoint> (a fresh optimizer "
            f"and schedule), or resume with the length it was saved with")

    def _report_drops_past_end(self, key: str, value, drops: list[int], advice: str) -> None:
        """Warn (one line) about LR drops at or past the run's end: they never happen."""
        late = [d for d in drops if d >= self.total_steps]
        if not late:
            return
        what = ("the LR never decays (the same as scheduler=constant)" if len(late) == len(drops) else
                f"the drops at steps {late} never happen")
        epochs = self.total_steps / self.steps_per_epoch
        log.warning("scheduler.%s=%s is at or past the run's end (steps %s; the run has %d steps, %.3g epoch%s): %s; "
                    "%s, or train longer (trainer.epochs)", key, value, drops, self.total_steps, epochs,
                    "" if epochs == 1 else "s", what, advice)

    def _decayed(self, base_lr: float, t: int) -> float:
        raise NotImplementedError

    def _progress(self, t: int) -> float:
        """s / S: fraction of the post-warmup span done, in [0, 1]."""
        return (t - self.warmup_steps) / (self.total_steps - self.warmup_steps)

    def _check_min_lr(self, min_lr: float) -> None:
        _require(0 <= min_lr <= min(self.base_lrs), "min_lr", min_lr,
                 f"a value in [0, smallest base LR = {min(self.base_lrs)}]")

    def _to_steps(self, value: float, unit: str) -> int:
        if unit == "fraction":
            return round(value * self.total_steps)
        return round(value * self.steps_per_epoch) if unit == "epoch" else int(value)


class ConstantSchedule(LRSchedule):
    """η = η₀ after warmup."""

    def length_free(self) -> bool:
        return True

    def _decayed(self, base_lr, t):
        return base_lr


class StepSchedule(LRSchedule):
    """η = η₀ γ^⌊t / P⌋, the period P given as ``step_size_epochs`` or ``step_size_steps`` (exactly one), P >= W.

    ``**run``: ``steps_per_epoch``, ``total_steps`` and the warmup arguments of ``LRSchedule``.
    """

    def __init__(self, optimizer, *, gamma: float = 0.1, step_size_epochs: float = 0.0, step_size_steps: int = 0,
                 **run):
        super().__init__(optimizer, **run)
        _require(0 < gamma <= 1, "gamma", gamma, "a decay factor in (0, 1]")
        _require((step_size_epochs > 0) != (step_size_steps > 0), "(step_size_epochs, step_size_steps)",
                 (step_size_epochs, step_size_steps), "exactly one of the two > 0")
        self.gamma = gamma
        self.period = int(step_size_steps) or round(step_size_epochs * self.steps_per_epoch)
        _require(self.period >= max(self.warmup_steps, 1), "step size in steps", self.period,
                 f">= 1 and >= warmup_steps={self.warmup_steps}")
        self.hparams.update(gamma=gamma, step_size_epochs=step_size_epochs, step_size_steps=step_size_steps)
        key = "step_size_steps" if step_size_steps else "step_size_epochs"
        self._report_drops_past_end(key, step_size_steps or step_size_epochs, [self.period],
                                    "shorten it (scheduler=multistep takes milestones as fractions of the run)")

    def length_free(self) -> bool:
        return True

    def _decayed(self, base_lr, t):
        return base_lr * self.gamma ** (t // self.period)


class MultiStepSchedule(LRSchedule):
    """η = η₀ γ^k, k = number of milestones m_i <= t; milestones in ``milestones_unit``: ``epoch``, ``step``, or
    ``fraction`` of the run's total steps T (m_i T rounded).

    Milestones are global iterations (epoch milestones are rounded to steps), strictly increasing, and the first is
    >= max(W, 1). ``**run``: ``steps_per_epoch``, ``total_steps`` and the warmup arguments of ``LRSchedule``.
    """

    def __init__(self, optimizer, *, milestones: Sequence[float], gamma: float = 0.1, milestones_unit: str = "epoch",
                 **run):
        super().__init__(optimizer, **run)
        _require(0 < gamma <= 1, "gamma", gamma, "a decay factor in (0, 1]")
        _require(milestones_unit in _UNITS, "milestones_unit", milestones_unit, f"one of {_UNITS}")
        milestones = list(milestones)
        _require(milestones_unit != "fraction" or all(0 < m < 1 for m in milestones), "milestones", milestones,
                 "fractions of the run in (0, 1) with milestones_unit=fraction")
        self.milestone_steps = [self._to_steps(m, milestones_unit) for m in milestones]
        steps = [max(self.warmup_steps, 1) - 1, *self.milestone_steps]
        _require(all(a < b for a, b in zip(steps, steps[1:])), "milestones", milestones,
                 f"strictly increasing (in steps: {self.milestone_steps}), the first >= max(1, "
                 f"warmup_steps={self.warmup_steps})")
        self.gamma = gamma
        self.hparams.update(milestones=milestones, gamma=gamma, milestones_unit=milestones_unit)
        self._report_drops_past_end("milestones", milestones, self.milestone_steps,
                                    "lower them, give them as fractions of the run (scheduler.milestones_unit=fraction)")

    def length_free(self) -> bool:
        return self.hparams["milestones_unit"] != "fraction"

    def _decayed(self, base_lr, t):
        return base_lr * self.gamma ** bisect_right(self.milestone_steps, t)


class ExponentialSchedule(LRSchedule):
    """η = η₀ γ^(s / steps_per_epoch): γ per epoch, applied smoothly every iteration (s = t - W).

    ``**run``: ``steps_per_epoch``, ``total_steps`` and the warmup arguments of ``LRSchedule``.
    """

    def __init__(self, optimizer, *, gamma: float, **run):
        super().__init__(optimizer, **run)
        _require(0 < gamma <= 1, "gamma", gamma, "a per-epoch decay factor in (0, 1]")
        self.gamma = gamma
        self.hparams.update(gamma=gamma)

    def length_free(self) -> bool:
        return True

    def _decayed(self, base_lr, t):
        return base_lr * self.gamma ** ((t - self.warmup_steps) / self.steps_per_epoch)


class PolynomialSchedule(LRSchedule):
    """η = η_min + (η₀ - η_min)(1 - s/S)^p.

    ``**run``: ``steps_per_epoch``, ``total_steps`` and the warmup arguments of ``LRSchedule``.
    """

    def __init__(self, optimizer, *, power: float = 1.0, min_lr: float = 0.0, **run):
        super().__init__(optimizer, **run)
        _require(power > 0, "power", power, "a value > 0")
        self._check_min_lr(min_lr)
        self.power, self.min_lr = power, min_lr
        self.hparams.update(power=power, min_lr=min_lr)

    def _decayed(self, base_lr, t):
        return self.min_lr + (base_lr - self.min_lr) * (1 - self._progress(t)) ** self.power


class CosineSchedule(LRSchedule):
    """η = η_min + (η₀ - η_min)(1 + cos(π s/S)) / 2; torch's CosineAnnealingLR with T_max = S, eta_min = η_min.

    ``**run``: ``steps_per_epoch``, ``total_steps`` and the warmup arguments of ``LRSchedule``.
    """

    def __init__(self, optimizer, *, min_lr: float = 0.0, **run):
        super().__init__(optimizer, **run)
        self._check_min_lr(min_lr)
        self.min_lr = min_lr
        self.hparams.update(min_lr=min_lr)

    def _decayed(self, base_lr, t):
        return self.min_lr + (base_lr - self.min_lr) * (1 + math.cos(math.pi * self._progress(t))) / 2


class OneCycleSchedule(LRSchedule):
    """One cycle (Smith & Topin 2017) with torch OneCycleLR's LR semantics (two phases, no momentum cycling).

    η_max = η₀, η_start = η₀ / div_factor, η_end = η_start / final_div_factor, peak at e = pct_start·T - 1:
        t <= e:  anneal(η_start → η_max, t / e)
        t >  e:  anneal(η_max → η_end, (t - e) / (T - 1 - e)), reaching η_end at the last step t = T - 1
    anneal: cos  a + (b - a)(1 - cos(π x)) / 2,  linear  a + (b - a) x.
    It warms up by itself, so the ``LRSchedule`` warmup must stay 0. ``**run``: ``steps_per_epoch``, ``total_steps``.
    """

    def __init__(self, optimizer, *, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, anneal_strategy: str = "cos", **run):
        super().__init__(optimizer, **run)
        _require(self.warmup_steps == 0, "warmup_steps", self.warmup_steps, "0: one-cycle warms up through pct_start")
        _require(0 < pct_start < 1, "pct_start", pct_start, "a fraction in (0, 1)")
        _require(pct_start * self.total_steps > 1, "pct_start", pct_start,
                 f"a rising phase of more than 1 step (pct_start * total_steps, total_steps={self.total_steps})")
        _require(div_factor > 0, "div_factor", div_factor, "a value > 0")
        _require(final_div_factor > 0, "final_div_factor", final_div_factor, "a value > 0")
        _require(anneal_strategy in _ANNEAL, "anneal_strategy", anneal_strategy, f"one of {_ANNEAL}")
        self.div_factor, self.final_div_factor = div_factor, final_div_factor
        self.anneal_strategy = anneal_strategy
        self.peak_step = pct_start * self.total_steps - 1
        self.hparams.update(pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor,
                            anneal_strategy=anneal_strategy)

    def _anneal(self, a: float, b: float, x: float) -> float:
        if self.anneal_strategy == "cos":
            return b + (a - b) * (1 + math.cos(math.pi * x)) / 2
        return a + (b - a) * x

    def _decayed(self, base_lr, t):
        t, e, last = min(t, self.total_steps - 1), self.peak_step, self.total_steps - 1
        start = base_lr / self.div_factor
        if t <= e:
            return self._anneal(start, base_lr, t / e)
        return self._anneal(base_lr, start / self.final_div_factor, (t - e) / (last - e))
