"""The loop's bookkeeping: a stopwatch for training time, the epoch's running totals, the steps awaiting a log.

Nothing here waits for the device except ``EpochTotals.mean`` and ``PendingSteps.drain``, the loop's two
deliberate synchronisations (once per epoch, once per logging interval), and ``Stopwatch.stop`` (when the
training clock stops: at the end of an epoch, a pause or a checkpoint).
"""
import math
import time
from dataclasses import dataclass, field

import torch

from training.distributed import DistEnv, all_reduce_sum
from training.step import StepResult


class Stopwatch:
    """Training time only: started for steps, stopped around evaluation and checkpoint writes.

    ``total`` is the run's training time (carried across resumes), ``epoch`` the current epoch's. On a GPU the
    host runs ahead of the device, so ``stop`` first waits for ``device``: the time then covers the queued work.
    """

    def __init__(self, total: float = 0.0, device: torch.device = torch.device("cpu")):
        self.total, self.epoch, self.device = total, 0.0, device
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> None:
        if self._started is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - self._started
            self.total += elapsed
            self.epoch += elapsed
            self._started = None

    def new_epoch(self) -> None:
        self.epoch = 0.0

    def epoch_so_far(self) -> float:
        """The epoch's training time including the running lap (for the progress bar's rate)."""
        return self.epoch + (time.perf_counter() - self._started if self._started is not None else 0.0)


class EpochTotals:
    """The epoch's training loss and accuracy: sum of loss x batch size and correct predictions summed on the
    device, examples counted on the host (a number sent to the device every step would be a blocking copy).
    Checkpointed as one float64 tensor (loss_sum, correct, count)."""

    def __init__(self, device: torch.device, state: torch.Tensor | None = None):
        fresh = state is None  # made on the device: no copy from the host
        self.sums = torch.zeros(2, dtype=torch.float64, device=device) if fresh else state[:2].to(device)
        self.count = 0 if fresh else int(state[2])  # (loss_sum, correct); examples

    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        self.sums += torch.stack([loss.double() * n, correct.double()])
        self.count += n

    def mean(self, dist: DistEnv) -> dict[str, float]:
        """train_loss and train_acc over every rank's examples (one synchronisation); NaN for an epoch whose
        every step was skipped (``on_nan=skip``): there is nothing to average."""
        loss_sum, correct, count = all_reduce_sum(self.state(self.sums.device), dist).tolist()
        if not count:
            return {"train_loss": math.nan, "train_acc": math.nan}
        return {"train_loss": loss_sum / count, "train_acc": correct / count}

    def state(self, device: torch.device = torch.device("cpu")) -> torch.Tensor:
        """(loss_sum, correct, count) as one float64 tensor on ``device``."""
        return torch.cat([self.sums, self.sums.new_full((1,), self.count)]).to(device)


@dataclass
class PendingSteps:
    """Per-step numbers kept on the device until the next log: (step, lr, loss, accuracy, grad_norm, clipped,
    clip threshold (autoclip; nan otherwise))."""
    steps: list[tuple[int, float]] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    def add(self, step: int, lr: float, result: StepResult, correct: torch.Tensor) -> None:
        acc = correct.float() / len(result.labels)
        self.steps.append((step, lr))
        threshold = result.clip_threshold if result.clip_threshold is not None else torch.full_like(acc, math.nan)
        self.values.append(torch.stack([result.loss.float(), acc, result.grad_norm.float(),
                                        result.clipped.float(), threshold.float()]))

    def drain(self) -> list[tuple[int, float, float, float, float, float, float]]:
        """(step, lr, loss, acc, grad_norm, clipped, clip threshold) per pending step, read in one
        synchronisation; then empty."""
        if not self.steps:
            return []
        rows = torch.stack(self.values).tolist()
        drained = [(step, lr, *row) for (step, lr), row in zip(self.steps, rows)]
        self.steps, self.values = [], []
        return drained
