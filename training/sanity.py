"""Pre-flight checks, each a function returning a CheckResult: its numbers and a verdict.

``run_checks(model, make_optimizer, data, precision, ...)`` runs them on throw-away copies of the model and
optimizer (the run starts from the untouched initial weights), stepping with the run's ``train_step``
(training/step.py): its loss, precision and clipping. ``batch`` is
the run's first training batch (augmented as in training); ``held-out`` ``heldout_samples`` validation
examples drawn by a fixed permutation (never augmented: an image folder stores its examples class by class).

1. data           labels in [0, C); inputs finite; the held-out inputs normalised: per channel
                  |mean| <= data_mean_tol and |std - 1| <= data_std_tol.
2. init_loss      cross-entropy at initialisation near ln C, the loss of uniform predictions:
                  ln C / init_loss_factor <= L0 <= init_loss_factor * ln C, and the model outputs C logits.
3. overfit        the first ``overfit_samples`` examples of the batch, trained on alone, reach training accuracy
                  ``overfit_acc`` within ``overfit_steps`` steps, or (slowly) their loss ends at
                  ``overfit_loss_ratio`` x its start or below (with lr 0, or no gradient reaching the weights,
                  they cannot); an overshoot on the way (a peak over 2x the start) is named, not failed.
4. gradient_flow  one backward pass (fp32): every parameter gets a finite, non-zero gradient no larger than
                  ``grad_explode_above``, and no layer's gradient norm is more than ``grad_max_ratio`` times
                  smaller than the largest layer's (vanishing); a per-layer table of gradient norms.
5. loss_decrease  ``decrease_steps`` steps on the training stream; the held-out loss must not rise by more than
                  ``decrease_min``, nor lag the training loss (a model memorising noise, labels shuffled against
                  the inputs, lowers its training loss, not its held-out loss). A slow fall passes.
Models run in train mode throughout (batch statistics: BatchNorm's running statistics mean nothing at
initialisation). The optimizer copy runs at its base LR (no schedule).
"""
import copy
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from data import ImageData, batches_forever

from training.monitor import parameter_layers
from training.options import SanityOptions
from training.precision import Precision
from training.step import GradientClip, LossFn, closure_step, needs_closure, train_step
from utils.progress import progress_bar

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class CheckResult:
    name: str
    passed: bool
    numbers: dict[str, float]
    message: str
    details: str = ""  # a longer table, printed under the report's (gradient_flow's per-layer norms)
    seconds: float = 0.0


@dataclass
class SanityReport:
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def table(self, details: bool | None = None) -> str:
        """One row per check, then each check's message; the longer details (gradient_flow's per-layer table)
        of every check with ``details=True``, of the failed ones only with None, of none with False."""
        rows = [("check", "verdict", "time", "numbers")]
        rows += [(r.name, "pass" if r.passed else "FAIL", f"{r.seconds:.1f}s",
                  "  ".join(f"{k}={_fmt(v)}" for k, v in r.numbers.items())) for r in self.results]
        lines = [_align(rows), *(f"{r.name}: {r.message}" for r in self.results)]
        shown = [r for r in self.results if r.details and (details or (details is None and not r.passed))]
        lines += [f"\n{r.name} per layer:\n{r.details}" for r in shown]
        return "\n".join(lines)

    def summary(self) -> str:
        if self.passed:
            return f"all {len(self.results)} checks passed"
        return "; ".join(f"{r.name}: {r.message}" for r in self.failed)


@dataclass(frozen=True)
class Recipe:
    """How the run trains, for the checks' copies: a fresh optimizer for a model, the loss, the precision
    (each copy gets its own loss scaler) and the clipping. ``lockstep``: under DDP, where every rank must make
    the same number of forward passes (SyncBatchNorm), so no check may stop early."""
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    loss_fn: LossFn
    precision: Precision
    clip: GradientClip = GradientClip()
    lockstep: bool = False


def run_checks(model: nn.Module, recipe: Recipe, data: ImageData, progress: bool = False, **options) -> SanityReport:
    """Run the chosen checks on copies of ``model``, trained as ``recipe`` says on ``data``'s batches; ``progress``:
    a bar over the checks, named by the one running."""
    opts = SanityOptions.parse(options)
    batch = _take(data.train, max(opts.overfit_samples, data.train.batch_size))
    # Without a val split the held-out batch comes from the test set: a check, nothing is chosen on it.
    heldout_set = data.val if data.val is not None else data.test
    heldout = heldout_set.sample(opts.heldout_samples)
    run = {
        "data": lambda: check_data({"train": batch[0], "held-out": heldout[0]},
                                   {"train": data.train.labels, "held-out": heldout_set.labels}, data.num_classes,
                                   stats_of="held-out", mean_tol=opts.data_mean_tol, std_tol=opts.data_std_tol),
        "init_loss": lambda: check_init_loss(model, recipe, batch, data.num_classes, factor=opts.init_loss_factor),
        "overfit": lambda: check_overfit(model, recipe, (batch[0][:opts.overfit_samples],
                                                         batch[1][:opts.overfit_samples]),
                                         target_acc=opts.overfit_acc, max_steps=opts.overfit_steps,
                                         loss_ratio=opts.overfit_loss_ratio),
        "gradient_flow": lambda: check_gradient_flow(model, recipe.loss_fn, batch,
                                                     explode_above=opts.grad_explode_above,
                                                     max_ratio=opts.grad_max_ratio),
        "loss_decrease": lambda: check_loss_decrease(model, recipe, batches_forever(data.train), heldout,
                                                     steps=opts.decrease_steps, min_decrease=opts.decrease_min),
    }
    results = []
    for name in (bar := progress_bar(opts.checks, desc="sanity", enabled=progress)):
        bar.set_description(f"sanity: {name}")
        started = time.perf_counter()
        results.append(run[name]())
        results[-1].seconds = time.perf_counter() - started
    return SanityReport(results)


# ------------------------------------------------------------------------------------------------ checks
def check_data(inputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], num_classes: int, *,
               stats_of: str, mean_tol: float, std_tol: float) -> CheckResult:
    """Labels in [0, C), every input finite, ``inputs[stats_of]`` normalised per channel."""
    lo = min(int(y.min()) for y in labels.values())
    hi = max(int(y.max()) for y in labels.values())
    nonfinite = {split: int((~torch.isfinite(x)).sum()) for split, x in inputs.items()}
    x = inputs[stats_of].transpose(0, 1).flatten(1).double()  # (C, N*H*W)
    mean, std = x.mean(1), x.std(1)
    worst_mean, worst_std = mean[mean.abs().argmax()].item(), std[(std - 1).abs().argmax()].item()
    numbers = {"label_min": lo, "label_max": hi, "classes": num_classes, "nonfinite": sum(nonfinite.values()),
               "mean": worst_mean, "std": worst_std}
    problems = [f"labels span [{lo}, {hi}], outside [0, {num_classes - 1}]"] if lo < 0 or hi >= num_classes else []
    problems += [f"{n} non-finite values in the {split} inputs" for split, n in nonfinite.items() if n]
    if not abs(worst_mean) <= mean_tol:
        problems.append(f"{stats_of} inputs have a channel mean {worst_mean:.3g} (allowed |mean| <= {mean_tol}): "
                        f"normalisation missing or with the wrong statistics?")
    if not abs(worst_std - 1) <= std_tol:
        problems.append(f"{stats_of} inputs have a channel std {worst_std:.3g} (allowed 1 +- {std_tol})")
    return _result("data", problems, numbers, f"labels in [0, {num_classes - 1}], inputs finite and normalised "
                                              f"(|mean| <= {mean_tol}, |std - 1| <= {std_tol})")


@torch.no_grad()
def check_init_loss(model: nn.Module, recipe: Recipe, batch: Batch, num_classes: int, *,
                    factor: float) -> CheckResult:
    """L0 = CE(model(x), y) at initialisation against ln C: within a factor ``factor`` either way."""
    model = copy.deepcopy(model).train()
    with recipe.precision.autocast():
        logits = model(batch[0]).float()  # (B, outputs)
    expected = math.log(num_classes)
    numbers = {"loss": float("nan"), "expected": expected, "outputs": logits.shape[1]}
    if logits.shape[1] != num_classes:
        return _result("init_loss", [f"the model outputs {logits.shape[1]} logits for {num_classes} classes"],
                       numbers, "")
    loss = recipe.loss_fn(logits, batch[1]).item()
    numbers.update(loss=loss, ratio=loss / expected, logit_std=logits.std().item())
    ok = expected / factor <= loss <= factor * expected
    problem = (f"loss {loss:.4g} at initialisation, expected ln({num_classes}) = {expected:.4g} within a factor "
               f"{factor:g} (logit std {numbers['logit_std']:.3g}: over-confident initial logits, unnormalised "
               f"inputs, or a loss that is not cross-entropy over {num_classes} classes?)")
    return _result("init_loss", [] if ok else [problem], numbers,
                   f"loss {loss:.4g} vs ln({num_classes}) = {expected:.4g} (allowed x{1 / factor:.3g}..x{factor:g})")


def check_overfit(model: nn.Module, recipe: Recipe, batch: Batch, *, target_acc: float, max_steps: int,
                  loss_ratio: float) -> CheckResult:
    """Train a copy on ``batch`` alone until its training accuracy reaches ``target_acc`` (or ``max_steps``);
    judged by ``overfit_verdict``."""
    model, optimizer, precision = _copies(model, recipe)
    first_loss, peak_loss, acc, steps = float("nan"), -math.inf, 0.0, 0
    for steps in range(1, max_steps + 1):
        loss, logits = _step(model, optimizer, precision, recipe, batch)
        acc = (logits.argmax(1) == batch[1]).float().mean().item()
        first_loss = loss if steps == 1 else first_loss
        peak_loss = max(peak_loss, loss) if math.isfinite(loss) else math.inf
        if acc >= target_acc and not recipe.lockstep:
            break
    return overfit_verdict({"acc": acc, "target": target_acc, "steps": steps, "samples": len(batch[1]),
                            "first_loss": first_loss, "peak_loss": peak_loss, "last_loss": loss,
                            "lr": optimizer.param_groups[0]["lr"]}, loss_ratio)


def overfit_verdict(numbers: dict, loss_ratio: float) -> CheckResult:
    """Pass at the target accuracy; short of it, pass a loss that ended at <= ``loss_ratio`` x its first value
    (learning, slowly; a peak above 2x on the way is named: at this LR the first steps overshoot, then recover,
    as deep ResNets do at lr 0.1 without warmup); else fail with what the losses show."""
    acc, target, steps, samples = numbers["acc"], numbers["target"], numbers["steps"], numbers["samples"]
    first, peak, last = numbers["first_loss"], numbers["peak_loss"], numbers["last_loss"]
    if acc >= target:
        return _result("overfit", [], numbers, f"accuracy {acc:.3f} >= {target} after {steps} steps on {samples} "
                                               f"examples")
    reached = f"training accuracy {acc:.3f} < {target} after {steps} steps on {samples} examples"
    if last <= loss_ratio * first:  # learning, only slowly (False for a non-finite loss)
        spike = (f", after peaking at {peak:.4g} (over 2x its start: at lr {numbers['lr']:g} the first steps "
                 f"overshoot, then recover)" if peak > 2 * first else "")
        return _result("overfit", [], numbers, f"{reached}, but the loss fell {first:.4g} -> {last:.4g} (to <= "
                                               f"{loss_ratio:g}x){spike}: a slow start, not a failure")
    return _result("overfit", [f"{reached} (loss {first:.4g} -> {last:.4g}, lr {numbers['lr']:g}): "
                               f"{_overfit_hint(numbers)}"], numbers, "")


def check_gradient_flow(model: nn.Module, criterion, batch: Batch, *, explode_above: float,
                        max_ratio: float) -> CheckResult:
    """One fp32 backward pass on a copy: every parameter's gradient finite, non-zero and <= ``explode_above``,
    and every layer's norm at least the largest layer's / ``max_ratio`` (else: vanishing).

    Dead: requires_grad=False (unless the model lists the parameter in ``frozen_parameters``: frozen on purpose, as
    airbench's whitening filters), no gradient at all (the graph is cut: a detached output kills its layer and
    every layer before it) or an exactly zero one. A layer's norm is sqrt(sum of its parameters' squared norms).
    """
    model = copy.deepcopy(model).train()
    criterion(model(batch[0]).float(), batch[1]).backward()
    layers = parameter_layers(model, trainable_only=False)
    frozen = set(getattr(model, "frozen_parameters", ()))
    status = {layer: [f"{n}: {why}" for n, p in params if n not in frozen and (why := _grad_status(p, explode_above))]
              for layer, _, params in layers}
    norms = {layer: math.sqrt(sum(p.grad.double().square().sum() for _, p in params if p.grad is not None))
             for layer, _, params in layers}
    alive = {k: v for k, v in norms.items() if 0 < v < math.inf}
    top, bottom = max(alive, key=alive.get, default="-"), min(alive, key=alive.get, default="-")
    problems = [s for layer, _, _ in layers for s in status[layer]]
    vanishing = [k for k, v in alive.items() if v < alive[top] / max_ratio]
    for layer in vanishing:
        status[layer].append(f"vanishing (< largest / {max_ratio:g})")
    if vanishing:
        problems.append(f"vanishing gradients in {len(vanishing)} layers, {alive[bottom]:.3g} at the least ({bottom}) "
                        f"vs {alive[top]:.3g} at the most ({top}), more than {max_ratio:g}x apart: "
                        f"{', '.join(vanishing[:4])}{', ...' if len(vanishing) > 4 else ''}")
    numbers = {"layers": len(norms), "problems": len(problems), "vanishing": len(vanishing),
               "max": alive.get(top, math.nan), "min": alive.get(bottom, math.nan),
               "max/min": alive[top] / alive[bottom] if alive else math.nan}
    rows = [("layer", "kind", "grad_norm", "status")]
    rows += [(layer, kind, f"{norms[layer]:.3e}",
              "; ".join(status[layer]) or ("frozen by the model" if all(n in frozen for n, _ in params) else "ok"))
             for layer, kind, params in layers]
    return _result("gradient_flow", problems, numbers, f"every parameter gets a finite non-zero gradient <= "
                   f"{explode_above:g}; largest in {top}, smallest in {bottom}", details=_align(rows))


def check_loss_decrease(model: nn.Module, recipe: Recipe, batches, heldout: Batch, *, steps: int,
                        min_decrease: float) -> CheckResult:
    """Train a copy for ``steps`` batches and judge the held-out loss L_h against the training loss L_t.

    What 30 steps can show: that the steps move the model the right way. Failures: L_h not finite or up by more
    than ``min_decrease`` (the steps make the model worse); L_t down by ``min_decrease`` or more while L_h falls by
    less than half as much (fitting the training batches without generalising: a model memorising noise);
    L_h exactly unchanged (no step moved the weights). A fall smaller than ``min_decrease`` on both is a slow
    start, reported as such and passed: over 30 steps a small learning rate and a broken one look alike, and the
    overfit check is the one that tells them apart.
    """
    model, optimizer, precision = _copies(model, recipe)
    before = _loss(model, heldout, recipe.loss_fn, precision)
    losses = [_step(model, optimizer, precision, recipe, b)[0] for b in itertools.islice(batches, steps)]
    after = _loss(model, heldout, recipe.loss_fn, precision)
    k = max(1, len(losses) // 5)  # the training loss, averaged over the first and the last fifth of the steps
    numbers = {"heldout_before": before, "heldout_after": after, "train_first": sum(losses[:k]) / k,
               "train_last": sum(losses[-k:]) / k, "train_max": max(losses), "steps": len(losses)}
    heldout_fall, train_fall = 1 - after / before, 1 - numbers["train_last"] / numbers["train_first"]
    change = (f"held-out loss {before:.4g} -> {after:.4g} ({-heldout_fall:+.1%}) and training loss "
              f"{numbers['train_first']:.4g} -> {numbers['train_last']:.4g} over {len(losses)} steps")
    memorising = ("the model fits the training batches without generalising: memorising rather than learning "
                  "(labels shuffled against the inputs?)")
    overshoot = _overshoot(numbers, losses)  # a training loss that fell from a spike says nothing of memorising
    if not math.isfinite(after) or heldout_fall < -min_decrease:
        hint = overshoot or (memorising if train_fall >= min_decrease else "")
        problem = f"{change}: the held-out loss rose by more than {min_decrease:.0%}" + (hint and f"; {hint}")
    elif train_fall >= min_decrease and heldout_fall < train_fall / 2:
        problem = (f"{change}: the held-out loss fell less than half as much as the training loss; "
                   f"{overshoot or memorising}")
    elif after == before:
        problem = f"{change}: the held-out loss did not change at all: no step moved the weights"
    else:
        slow = "" if heldout_fall >= min_decrease else f"; a slow start (under -{min_decrease:.0%}), not a failure"
        return _result("loss_decrease", [], numbers, change + slow)
    return _result("loss_decrease", [problem], numbers, "")


def _overshoot(numbers: dict, losses: list[float]) -> str:
    """Whether the training losses diverged or overshot ('' when neither)."""
    if not all(math.isfinite(v) for v in losses):
        first_bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
        return (f"the training loss became non-finite at step {first_bad + 1}: the steps diverge (learning rate too "
                f"large?)")
    if numbers["train_max"] > 2 * losses[0]:
        return (f"the training loss peaked at {numbers['train_max']:.4g} (first step {losses[0]:.4g}): the steps "
                f"overshoot (learning rate too large?)")
    return ""


def _overfit_hint(numbers: dict) -> str:
    """What the losses of a failed overfit run show."""
    first, peak, last, lr = numbers["first_loss"], numbers["peak_loss"], numbers["last_loss"], numbers["lr"]
    if lr == 0:
        return "the learning rate is 0"
    if not math.isfinite(peak) or peak > 2 * first or last > first:
        return f"the loss peaked at {peak:.4g}: the steps overshoot (learning rate too large?)"
    if last == first:
        return "the loss did not change: no gradient reaches the weights?"
    return (f"the loss fell by {1 - last / first:.0%} only: a learning rate too small for this optimizer, or a model "
            f"too weak to memorise {numbers['samples']} examples?")


# ----------------------------------------------------------------------------------------------- helpers
def _take(loader, n: int) -> Batch:
    """The first ``n`` examples of the loader's epoch 0 (fewer if it holds fewer)."""
    loader.set_epoch(0)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        if sum(len(b) for b in ys) >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def _copies(model: nn.Module, recipe: Recipe) -> tuple[nn.Module, torch.optim.Optimizer, Precision]:
    """A train-mode copy of the model, a fresh optimizer of the run's config for it, and a fresh loss scaler."""
    model = copy.deepcopy(model).train()
    optimizer, p = recipe.make_optimizer(model), recipe.precision
    optimizer.zero_grad(set_to_none=True)  # the copy carries any .grad of the original; train_step zeroes after
    return model, optimizer, Precision(p.mode, p.device, p.static_scale)


def _step(model, optimizer, precision, recipe: Recipe, batch: Batch) -> tuple[float, torch.Tensor]:
    """One step as the Trainer takes it: the loss (a float) and logits before it."""
    x, y = batch
    if needs_closure(optimizer):
        result = closure_step(model, recipe.loss_fn, optimizer, precision, [batch], len(y), clip=recipe.clip)
    else:
        result = train_step(model, recipe.loss_fn, optimizer, precision, x, y, clip=recipe.clip)
    return result.loss.item(), result.logits


@torch.no_grad()
def _loss(model: nn.Module, batch: Batch, criterion, precision: Precision) -> float:
    with precision.autocast():
        return criterion(model(batch[0]).float(), batch[1]).item()


def _grad_status(p: torch.Tensor, explode_above: float) -> str:
    """Why a parameter's gradient is unhealthy ('' when it is fine)."""
    if not p.requires_grad:
        return "requires_grad=False"
    if p.grad is None:
        return "no gradient (output detached or unused?)"
    norm = p.grad.detach().double().norm().item()
    if not math.isfinite(norm):
        return f"non-finite gradient ({norm})"
    if norm == 0:
        return "zero gradient"
    return f"gradient norm {norm:.3g} > {explode_above:g}" if norm > explode_above else ""


def _result(name: str, problems: list[str], numbers: dict, ok_message: str, details: str = "") -> CheckResult:
    return CheckResult(name, not problems, numbers, "; ".join(problems) or ok_message, details)


def _align(rows: list[tuple[str, ...]]) -> str:
    """Rows as text, every column but the last padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]) for row in rows)


def _fmt(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:.4g}"
