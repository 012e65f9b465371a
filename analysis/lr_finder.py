"""The LR range test (Smith 2017, "Cyclical Learning Rates"; fastai's lr_find): ``python -m analysis.lr_finder``.

On a copy of the model, take ``num_steps`` training steps while the LR grows exponentially,

    lr_i = min_lr * (max_lr / min_lr)^(i / (num_steps - 1)),

record the loss, and smooth it with a debiased exponential moving average
(s_i = beta s_{i-1} + (1 - beta) loss_i, smoothed_i = s_i / (1 - beta^(i+1)); ``smoothing`` = beta: 0.95 here, a
~20-step window; fastai's 0.98 averages ~50 steps and lags more, which moves every feature of the curve, the
steepest point among them, to a larger LR). Stop early once the smoothed loss exceeds ``diverge_factor`` x its
minimum so far (or turns non-finite). The suggestion follows ``suggestion``: ``steepest``, the LR of the steepest
descent of the smoothed loss against log LR (the minimum of its gradient) before the smoothed loss's minimum,
ignoring the first ``skip_start`` and last ``skip_end`` points; or ``minimum_over_10``, the LR of the smoothed
loss's minimum divided by 10 (fastai's ``minimum``). The output, the JSON and the figure name the rule. Without
``checkpoint`` the model is freshly initialised with ``trainer.seed`` (the test is meant for the start of
training); the optimizer is ``cfg.optimizer`` (its own ``lr`` is overridden). The ramp runs in float32, without
autocast.
Writes ``lr_finder.png`` (raw and smoothed loss against LR, log x) and ``lr_finder.json``, and TensorBoard images.
"""
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

import optimizers
from analysis.figures import FigureWriter, model_name, plt
from analysis.loading import model_for, with_checkpoint_data
from cli.entry import command, run
from data import batches_forever
from training.precision import Precision
from training.step import train_step
from utils.device import resolve_device
from utils.errors import require
from utils.io import save_json


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stopped_early: bool
    suggestion: float | None  # None when too few points remain after skipping the ends
    rule: str  # a key of RULES: how the suggestion was chosen
    beta: float  # the smoothing factor


def lr_range_test(model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                  batches: Iterator, loss_fn: Callable = F.cross_entropy, *, min_lr: float = 1e-7,
                  max_lr: float = 10.0, num_steps: int = 300, beta: float = 0.95, diverge_factor: float = 4.0,
                  skip_start: int = 10, skip_end: int = 5, rule: str = "steepest") -> RangeTest:
    """Run the exponential LR ramp on a deep copy of ``model`` (left untouched); ``batches`` yields (x, y)."""
    suggest = RULES[rule][0]
    model = copy.deepcopy(model).train()
    optimizer = make_optimizer(model)
    optimizer.zero_grad(set_to_none=True)  # the copy carries any .grad of the original; train_step zeroes after
    precision = Precision("fp32", next(model.parameters()).device)
    lrs, losses, smoothed, average, best = [], [], [], 0.0, math.inf
    for i in range(num_steps):
        lr = min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        value = train_step(model, loss_fn, optimizer, precision, x, y).loss.item()
        average = beta * average + (1 - beta) * value
        lrs.append(lr)
        losses.append(value)
        smoothed.append(average / (1 - beta ** (i + 1)))
        stop = not math.isfinite(smoothed[-1]) or smoothed[-1] > diverge_factor * best
        if stop or i == num_steps - 1:
            return RangeTest(lrs, losses, smoothed, stop, suggest(lrs, smoothed, skip_start, skip_end), rule, beta)
        best = min(best, smoothed[-1])


def steepest(lrs: list[float], smoothed: list[float], skip_start: int, skip_end: int) -> float | None:
    """The LR where d(smoothed loss)/d(log lr) is most negative on the way down to the smoothed loss's minimum
    (past it, a chaotic loss can dip steeply too), between the skipped ends (the last point, the one that
    tripped the divergence test, is always among the skipped)."""
    stop = min(len(lrs) - max(skip_end, 1), int(np.argmin(smoothed)) + 1)
    if stop - skip_start < 2:
        return None
    log_lrs, values = np.log(lrs[skip_start:stop]), np.array(smoothed[skip_start:stop])
    return float(np.exp(log_lrs[np.argmin(np.gradient(values, log_lrs))]))


def minimum_over_10(lrs: list[float], smoothed: list[float], skip_start: int, skip_end: int) -> float | None:
    """The LR at the smoothed loss's minimum (between the skipped ends) divided by 10."""
    stop = len(lrs) - max(skip_end, 1)
    if stop - skip_start < 1:
        return None
    return lrs[skip_start + int(np.argmin(smoothed[skip_start:stop]))] / 10


RULES = {  # suggestion name -> (rule, what it says)
    "steepest": (steepest, "steepest descent of the smoothed loss against log lr, before its minimum"),
    "minimum_over_10": (minimum_over_10, "lr of the smoothed loss's minimum / 10 (fastai's 'minimum')"),
}


def describe(result: RangeTest) -> str:
    return f"{RULES[result.rule][1]}, loss smoothed with beta={result.beta}"


def plot_range_test(result: RangeTest, what: str = ""):
    """The loss against the LR (log axis), raw and smoothed, with the suggestion; ``what``: the model and optimizer."""
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.3, lw=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", lw=1.8, label=f"smoothed loss (beta {result.beta})")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="red", ls="--", label=f"suggested lr {result.suggestion:.3g}: "
                                                                  f"{RULES[result.rule][1]}")
        at = np.searchsorted(result.lrs, result.suggestion).clip(0, len(result.lrs) - 1)
        ax.plot(result.suggestion, result.smoothed[at], "o", color="red", ms=8)
    ax.set_xscale("log")
    # from the lowest loss to the start (always shown) or 4x the smoothed minimum, whichever is higher: the
    # explosion at the end is cut off, the start never
    low = min(result.losses)
    high = max(result.losses[0], min(max(result.smoothed), 4 * min(result.smoothed)))
    ax.set(xlabel="learning rate", ylabel="training loss", ylim=(low - 0.05 * (high - low), high * 1.05),
           title=f"LR range test{f': {what}' if what else ''}"
                 + (" (stopped early: loss exploded)" if result.stopped_early else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=9)  # below the axes: nothing covered
    return fig


def find_lr(cfg: DictConfig, out_dir: str | Path) -> tuple[FigureWriter, RangeTest]:
    require(0 < cfg.min_lr < cfg.max_lr, "min_lr", cfg.min_lr, f"a number in (0, max_lr={cfg.max_lr})")
    require(cfg.num_steps >= 2, "num_steps", cfg.num_steps, "an integer >= 2")
    require(0 <= cfg.smoothing < 1, "smoothing", cfg.smoothing, "a number in [0, 1)")
    require(cfg.diverge_factor > 1, "diverge_factor", cfg.diverge_factor, "a number > 1")
    require(cfg.suggestion in RULES, "suggestion", cfg.suggestion, " or ".join(RULES))
    require(not getattr(get_class(cfg.optimizer._target_), "requires_closure", False), "optimizer._target_",
            cfg.optimizer._target_, "an optimizer that steps without a closure (not L-BFGS)")
    device = resolve_device(cfg.trainer.device)
    model, saved = model_for(cfg)
    model = model.to(device)
    data = instantiate(cfg.data, _partial_=True)(device=device)
    result = lr_range_test(model, lambda m: optimizers.build(cfg.optimizer, m), batches_forever(data.train),
                           min_lr=cfg.min_lr, max_lr=cfg.max_lr, num_steps=cfg.num_steps, beta=cfg.smoothing,
                           diverge_factor=cfg.diverge_factor, skip_start=cfg.skip_start, skip_end=cfg.skip_end,
                           rule=cfg.suggestion)
    out = FigureWriter(out_dir, tensorboard=True)
    out.save(plot_range_test(result, f"{model_name(saved.model)}, {cfg.optimizer._target_.rsplit('.', 1)[-1]}"),
             "lr_finder")
    save_json({"suggested_lr": result.suggestion, "checkpoint": cfg.checkpoint, "optimizer": cfg.optimizer._target_,
               "steps_run": len(result.lrs), "lr_at_min_smoothed_loss": result.lrs[int(np.argmin(result.smoothed))],
               **asdict(result), "rule": describe(result)}, out.out_dir / "lr_finder.json")
    out.add(out.out_dir / "lr_finder.json")
    return out, result


@command("lr_finder")
def main(cfg: DictConfig) -> None:
    cfg = with_checkpoint_data(cfg, HydraConfig.get().overrides.task)
    out, result = find_lr(cfg, HydraConfig.get().runtime.output_dir)
    suggestion = "none (too few steps ran)" if result.suggestion is None else f"{result.suggestion:.4g}"
    print(f"suggested lr {suggestion} by {describe(result)} ({len(result.lrs)} of {cfg.num_steps} steps run"
          f"{', stopped early: the loss exploded' if result.stopped_early else ''})")
    print(out.report())


if __name__ == "__main__":
    run(main)
