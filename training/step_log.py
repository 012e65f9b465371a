"""What the loop records of its steps. Each step's numbers wait on the device (``PendingSteps``) until a logging step
writes them, in one synchronisation. There a non-finite loss stops the run (``on_nan=stop``); with ``on_nan=skip``
the step was not applied (training/step.py), and only more than ``max_skipped_fraction`` of an epoch's steps
skipped is divergence. The fp16 loss scaler's dropped steps are counted and logged beside its scale."""
import math

from training.logger import RunLogger
from training.meters import PendingSteps
from training.precision import Precision
from training.step import StepResult
from utils.errors import UserError

NO_CHECKPOINT = "no checkpoint was written yet. Start again with a lower optimizer.lr or trainer.clip.mode=norm"


class DivergenceError(UserError, RuntimeError):
    """The loss became non-finite; the last good checkpoint is left as it was."""


class StepLog:
    def __init__(self, logger: RunLogger, precision: Precision, *, on_nan: str, max_skipped_fraction: float,
                 steps_per_epoch: int, autoclip: bool, monitor=None):
        self.logger, self.precision, self.monitor = logger, precision, monitor
        self.on_nan, self.max_skipped_fraction, self.autoclip = on_nan, max_skipped_fraction, autoclip
        self.steps_per_epoch = steps_per_epoch  # closure optimizers never skip (training/step.py)
        self.pending = PendingSteps()
        self.last_finite_loss = math.nan
        self.skipped_steps = 0  # fp16 steps the loss scaler dropped on overflow, over the run
        self.nan_skipped = 0  # steps of this epoch that on_nan=skip dropped
        self.advice = NO_CHECKPOINT  # what to do after divergence

    def add(self, step: int, epoch: int, lr: float, result: StepResult, correct) -> None:
        """Keep step ``step``'s numbers (on the device) for the next ``write``; count it if it was skipped."""
        if result.skipped:
            self.nan_skipped += 1
            if self.nan_skipped > self.max_skipped_fraction * self.steps_per_epoch:
                raise DivergenceError(
                    f"trainer.on_nan=skip skipped {self.nan_skipped} of the {self.steps_per_epoch} steps of epoch "
                    f"{epoch + 1} (loss {float(result.loss)} at step {step}), more than "
                    f"trainer.max_skipped_fraction={self.max_skipped_fraction:g}; {self.advice}")
        self.pending.add(step, lr, result, correct)

    def write(self, last_step: int) -> tuple | None:
        """Log the pending steps; the loss scaler's state at ``last_step``. Returns the last step's row (step, lr,
        loss, acc, grad_norm, clipped, clip threshold), or None when nothing was pending."""
        rows = self.pending.drain()
        if self.monitor is not None:
            self.monitor.flush()
        for step, lr, loss, acc, norm, clipped, threshold in rows:
            if not math.isfinite(loss):
                if self.on_nan == "stop":
                    raise DivergenceError(f"loss became {loss} at step {step} (lr {lr:.4g}, last finite loss "
                                          f"{self.last_finite_loss:.4g}); {self.advice}")
                continue
            self.last_finite_loss = loss
            self.logger.scalars({"train/loss": loss, "train/acc": acc, "lr": lr, "watch/grad_norm": norm,
                                 "watch/clip_fired": clipped}, step)
            if self.autoclip:
                self.logger.scalars({"watch/clip_threshold": threshold}, step)
        if rows and self.precision.uses_scaler:
            self.skipped_steps += sum(not math.isfinite(row[4]) for row in rows)
            self.logger.scalars({"watch/amp_loss_scale": self.precision.scale(),
                                 "watch/amp_skipped_steps": self.skipped_steps}, last_step)
        return rows[-1] if rows else None

    def new_epoch(self) -> None:
        self.nan_skipped = 0

    def checkpointed(self, step: int, continue_with: str) -> None:
        """A checkpoint of step ``step`` exists (written or resumed from): divergence from here can go back to it."""
        self.advice = (f"the last checkpoint (step {step}) is intact. Continue from it at a lower LR: the same "
                       f"command plus {continue_with} optimizer.lr=<lower> (or trainer.clip.mode=norm)")

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps, "nan_skipped": self.nan_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_steps, self.nan_skipped = state["skipped_steps"], state.get("nan_skipped", 0)
