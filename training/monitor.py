"""Per-layer gradient and weight norms during training, and alarms for vanishing or exploding layers.

A layer is a module that holds parameters itself (a Linear, a Conv, a BatchNorm); its norm is over all
its trainable parameters, ‖g_layer‖ = sqrt(Σ_p ‖g_p‖²), likewise ‖w_layer‖. The Trainer calls
``observe`` every step after backward, unscaling and clipping (the gradients the optimizer will use);
every ``every_n_steps`` steps the monitor takes every parameter's gradient and weight norm with one
``torch._foreach_norm`` each and sums squares into layers, on the device; nothing waits for the device until
``flush``, which the Trainer calls when it logs: it reads every pending observation in one synchronisation.
It writes ``weights/grad_norm/<layer>`` and ``weights/norm/<layer>`` scalars (and ``weights/grad/<layer>``,
``weights/value/<layer>`` histograms at the first observation in each period of ``histograms_every_n_steps``
steps: a device copy of every tensor taken at that step, copied to the host at the flush, ~40x the cost of the
norms), appends a row to
``<run dir>/grad_norms.jsonl`` (the history ``analysis.gradient_flow`` draws), and logs a warning when a layer's
gradient norm stays below ``vanish_below`` or above ``explode_above`` (or is not finite) for ``patience``
observations in a row.
Only the process that writes (rank 0) observes: under DDP the gradients are already averaged over ranks.
"""
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from training.logger import RunLogger
from training.options import MONITOR_RULES, check_rules
from utils.errors import require

log = logging.getLogger(__name__)

HISTORY_FILE = "grad_norms.jsonl"


def parameter_layers(model: nn.Module, trainable_only: bool = True) -> list[tuple[str, str, list]]:
    """(layer name, module class, [(parameter name, parameter)]) for each module holding parameters, in order."""
    found = []
    for name, module in model.named_modules():
        params = [(f"{name}.{n}" if name else n, p) for n, p in module.named_parameters(recurse=False)
                  if p.requires_grad or not trainable_only]
        if params:
            found.append((name or type(module).__name__, type(module).__name__, params))
    return found


@dataclass
class GradientHistory:
    """Observed steps, and for each step one gradient norm and one weight norm per layer."""
    layers: list[str]
    kinds: list[str]
    steps: list[int] = field(default_factory=list)
    grad_norms: list[list[float]] = field(default_factory=list)
    weight_norms: list[list[float]] = field(default_factory=list)

    def append(self, step: int, grad: list[float], weight: list[float]) -> None:
        self.steps.append(step)
        self.grad_norms.append(grad)
        self.weight_norms.append(weight)


def read_history(path: str | Path) -> GradientHistory:
    """Read ``grad_norms.jsonl`` (a header line, then one row per observation); a step observed twice (a run
    resumed from an earlier checkpoint) keeps its last row."""
    header, *rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    latest = {row["step"]: row for row in rows}
    history = GradientHistory(header["layers"], header["kinds"])
    for step in sorted(latest):
        history.append(step, latest[step]["grad_norm"], latest[step]["weight_norm"])
    return history


class GradientMonitor:
    def __init__(self, logger: RunLogger, *, every_n_steps: int = 50, vanish_below: float = 1e-6,
                 explode_above: float = 1e3, patience: int = 3, histograms_every_n_steps: int = 500):
        check_rules(MONITOR_RULES, "monitor", dict(every_n_steps=every_n_steps, vanish_below=vanish_below,
                                                  explode_above=explode_above, patience=patience,
                                                  histograms_every_n_steps=histograms_every_n_steps))
        require(explode_above > vanish_below, "monitor.explode_above", explode_above,
                f"a number > monitor.vanish_below={vanish_below}")
        self.logger, self.every_n_steps = logger, every_n_steps
        self.histograms_every_n_steps = histograms_every_n_steps
        self._histogram_period: int | None = None  # step // histograms_every_n_steps at the last histograms
        self.vanish_below, self.explode_above, self.patience = vanish_below, explode_above, patience
        self.history: GradientHistory | None = None
        self._params: list[nn.Parameter] = []
        self._layer_of: torch.Tensor | None = None  # (P,) index of each parameter's layer
        self._layer_params: list[list[nn.Parameter]] = []
        self._streaks: dict[str, list[int]] = {}
        self._last_observed: int | None = None
        self._pending: list[tuple[int, torch.Tensor, list | None]] = []  # (step, (2, layers) norms, histogram copies)

    def observe(self, model: nn.Module, step: int) -> None:
        """Take step ``step``'s norms (and, first in a histogram period, copies of the tensors) on the device, if
        it is a step to observe (once: L-BFGS calls this per closure evaluation). ``flush`` reads and writes them."""
        if not self.every_n_steps or step % self.every_n_steps or not self.logger.enabled:
            return
        if self.history is None:
            self._start(model)
        elif self._last_observed == step:
            return
        self._last_observed = step
        grads = [p.grad if p.grad is not None else p.new_zeros(()) for p in self._params]
        norms = torch.stack([torch.stack(torch._foreach_norm(grads)).float(),
                             torch.stack(torch._foreach_norm(self._params)).float()])  # (2, P)
        per_layer = norms.new_zeros(2, len(self.history.layers)).index_add_(1, self._layer_of, norms.square())
        self._pending.append((step, per_layer.sqrt(), self._histogram_copies(step)))

    def flush(self) -> None:
        """Read the pending observations (one synchronisation for all), then write scalars, histograms and history
        rows and raise alarms. The Trainer calls it when it logs."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        rows = torch.stack([norms for _, norms, _ in pending]).tolist()  # (observations, 2, layers)
        for (step, _, copies), (grad, weight) in zip(pending, rows):
            self.history.append(step, grad, weight)
            self._write(step, grad, weight, copies)
            self._alarm(step, grad)

    def _start(self, model: nn.Module) -> None:
        layers = parameter_layers(model)
        self.history = GradientHistory([name for name, _, _ in layers], [kind for _, kind, _ in layers])
        self._params = [p for _, _, params in layers for _, p in params]
        device = self._params[0].device
        self._layer_of = torch.cat([torch.full((len(params),), i, device=device)  # made on the device: no copy
                                    for i, (_, _, params) in enumerate(layers)])
        self._streaks = {"vanish_below": [0] * len(layers), "explode_above": [0] * len(layers)}
        self._layer_params = [[p for _, p in params] for _, _, params in layers]
        path = self.logger.run_dir / HISTORY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"layers": self.history.layers, "kinds": self.history.kinds}) + "\n")

    def _histogram_copies(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor | None]] | None:
        """At the first observation in each period of ``histograms_every_n_steps`` steps: per layer, a device copy of
        its weights and gradients (flattened), for ``flush`` to write; else None."""
        period = step // self.histograms_every_n_steps if self.histograms_every_n_steps else None
        if period is None or period == self._histogram_period:
            return None
        self._histogram_period = period
        return [(torch.cat([p.detach().flatten() for p in params]),
                 torch.cat([p.grad.flatten() for p in params if p.grad is not None])
                 if any(p.grad is not None for p in params) else None) for params in self._layer_params]

    def _write(self, step: int, grad: list[float], weight: list[float], copies) -> None:
        for i, (layer, g, w) in enumerate(zip(self.history.layers, grad, weight)):
            self.logger.scalars({f"weights/grad_norm/{layer}": g, f"weights/norm/{layer}": w}, step)
            if copies is not None:
                self.logger.histogram(f"weights/value/{layer}", copies[i][0], step)
                if copies[i][1] is not None:
                    self.logger.histogram(f"weights/grad/{layer}", copies[i][1], step)
        with open(self.logger.run_dir / HISTORY_FILE, "a") as f:
            f.write(json.dumps({"step": step, "grad_norm": grad, "weight_norm": weight}) + "\n")

    def _alarm(self, step: int, grad: list[float]) -> None:
        """Warn once per streak, in one line per kind naming every layer that has just been out of bounds for
        ``patience`` observations in a row."""
        for key, what, relation in (("vanish_below", "vanishing", "below"), ("explode_above", "exploding", "above")):
            limit, reached = getattr(self, key), []
            for i, (layer, norm) in enumerate(zip(self.history.layers, grad)):
                out = norm < limit if key == "vanish_below" else not norm <= limit
                self._streaks[key][i] = self._streaks[key][i] + 1 if out else 0
                if self._streaks[key][i] == self.patience:
                    reached.append(f"{layer} ({norm:.3g})")
            if reached:
                log.warning("%s gradients in %d layer(s), norm %s monitor.%s=%g for %d observations in a row (one "
                            "every %d steps, the last at step %d): %s", what, len(reached), relation, key, limit,
                            self.patience, self.every_n_steps, step, ", ".join(reached))

