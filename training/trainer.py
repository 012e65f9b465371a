"""The Trainer: one visible loop of epochs of steps, in nanoGPT's shape.

Each pass of ``fit``'s inner loop, top to bottom:
    lr = schedule(global_step) -> train_step (training/step.py) -> count it -> update the weight EMA if due
    (training/ema.py) -> every ``log_every_n_steps``: log (one device synchronisation) -> pause if asked (a signal,
    ``stop_after_steps``) -> checkpoint if due -> stop at ``max_steps``
and after each epoch: the epoch's training totals -> evaluate if due (the EMA's weights too) -> record the epoch
and checkpoint it.
Decisions (``should_*``) are pure checks of the counters; every action is a call in the loop. Closure optimizers
(L-BFGS) step once per batch (``closure=per_batch``) or once per epoch on the whole set (``full_batch``).
Beside it: training/step_log.py writes the steps' numbers and stops a diverged run; training/trainer_state.py holds
what survives a restart (checkpoint, resume, ``init_from``).
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from data import ImageData
from training.compiling import maybe_compile
from training.distributed import DistEnv, max_over_ranks, wrap_model
from training.ema import WeightEMA
from training.evaluation import evaluate, test_scores
from training.logger import RunLogger
from training.meters import EpochTotals, Stopwatch
from training.options import TrainerOptions
from training.progress import EpochBar
from training.precision import Precision
from training.profiling import profiling
from training.signals import Interrupted, stop_signals_to
from training.step import GradientClip, StepResult, closure_step, needs_closure, train_step
from training.step_log import StepLog
from training.trainer_state import TrainerState

log = logging.getLogger(__name__)


# The HPARAMS tab's metric columns (TensorBoard tag: the summary.json key it ends on): how well, and how fast.
# TensorBoard shows a tag's last value there, so each column is a curve the run logs anyway, not a card of one point.
HPARAM_METRICS = {"val/best_acc": "best_val_acc", "val/acc": "final_val_acc", "val/best_loss": "best_val_loss",
                  "val/loss": "final_val_loss", "test/acc": "test_acc", "test/loss": "test_loss",
                  "time/train_seconds": "train_time", "time/images_per_sec": "train_images_per_sec"}


@dataclass(frozen=True)
class Runtime:
    """Where a run executes: its device, precision, output folder and process group."""
    device: torch.device
    precision: Precision
    run_dir: Path
    dist: DistEnv = DistEnv()


class Trainer(TrainerState):
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, data: ImageData,
                 logger: RunLogger, runtime: Runtime, options: TrainerOptions = TrainerOptions(), *,
                 monitor=None, config: dict | None = None, continue_with: str | None = None):
        self.model, self.optimizer, self.scheduler, self.data, self.logger = model, optimizer, scheduler, data, logger
        self.options, self.monitor, self.config = options, monitor, config or {}
        # The overrides that continue this run from its checkpoint (in a sweep cli/compose.py names the sweep's dir)
        self.continue_with = continue_with or f"trainer.resume=auto hydra.run.dir={runtime.run_dir}"
        self.device, self.precision, self.dist = runtime.device, runtime.precision, runtime.dist
        self.run_dir = Path(runtime.run_dir)
        # DDP- and torch.compile-wrapped view of ``model`` for training steps
        self.forward_model = maybe_compile(wrap_model(model, self.dist, self.device), options.compile)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)
        observe = (lambda: monitor.observe(model, self.global_step)) if monitor is not None else None
        self.clip = GradientClip(options.clip_mode, options.clip_max, observe, options.clip_percentile,
                                 options.clip_window)
        self.ema = None if not options.ema_decay else WeightEMA(
            model, decay=options.ema_decay, every=options.ema_every, warmup=options.ema_warmup,
            lookahead=options.ema_lookahead, total_steps=scheduler.total_steps)
        self.full_batch = needs_closure(optimizer) and options.closure == "full_batch"
        # Counters: epochs completed; position inside the current epoch; optimizer steps taken.
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_val_acc, self.final_val_acc, self.train_images = 0.0, None, 0
        self.stopwatch = Stopwatch(device=self.device)
        self.totals = EpochTotals(self.device)
        self.steps = StepLog(logger, self.precision, on_nan=options.on_nan, steps_per_epoch=len(data.train),
                             max_skipped_fraction=options.max_skipped_fraction, autoclip=self.clip.auto is not None,
                             monitor=monitor)
        self.stop_signal: int | None = None

    # ----------------------------------------------------------------------------------------- the loop
    def fit(self, stop_after_steps: int | None = None) -> dict:
        """Train to ``epochs`` (or ``max_steps``); ``stop_after_steps`` pauses early with a checkpoint."""
        # Events of the training so far sit at steps < global_step (see ``last_step``): hide what a killed attempt
        # logged from here on (on a fresh start: everything an attempt killed before its first checkpoint logged)
        self.logger.open(purge_step=self.global_step)
        self.logger.truncate_epochs(self.epoch)  # and its metric lines (also on a fresh start)
        try:
            with stop_signals_to(self._request_stop), profiling(self.options.profile_steps if self.dist.is_main
                                                                  else None, self.run_dir / "profile",
                                                                  self.device) as profile_step:
                while self.epoch < self.options.epochs and not self.max_steps_reached():
                    self._agree_on_stop()
                    if self.should_stop(self.global_step):  # the signal came during evaluation
                        self._pause()
                    self.data.train.set_epoch(self.epoch, start_batch=self.step_in_epoch)
                    self.forward_model.train()
                    bar = EpochBar(len(self.data.train), self.step_in_epoch, self.epoch + 1, self.options.epochs,
                                   self.options.progress_bar)
                    self.stopwatch.new_epoch()
                    self.stopwatch.start()
                    for x, y in self._batches():
                        self.scheduler.step_update(self.global_step)  # this step's LR, a pure function of it
                        self._count(self._step(x, y))
                        if self.ema is not None:
                            self.ema.step(self.model, self.global_step)
                        bar.update()
                        profile_step()
                        if self.should_log(self.global_step):
                            self._show(bar, self.steps.write(self.last_step))
                            self._agree_on_stop()
                        if self.should_pause(self.global_step, stop_after_steps):
                            self.steps.write(self.last_step)
                            self.stopwatch.stop()
                            bar.close()
                            return self._pause()
                        if self.should_checkpoint(self.global_step):
                            self.steps.write(self.last_step)
                            self.stopwatch.stop()  # the checkpoint holds the training time; writing it is not training
                            self.save_checkpoint()
                            self.stopwatch.start()
                        if self.max_steps_reached():
                            break
                    self.steps.write(self.last_step)
                    self.stopwatch.stop()
                    bar.close()
                    train = self.totals.mean(self.dist)
                    self.totals = EpochTotals(self.device)
                    val = self.evaluate() if self.should_evaluate(self.epoch + 1) else None
                    self._end_epoch(train, val, self._evaluate_ema() if val is not None else None)
                return self._finish()
        finally:
            self.logger.close()

    # -------------------------------------------------------------------------- decisions (pure checks)
    def should_log(self, step: int) -> bool:
        return step % self.logger.log_every_n_steps == 0

    def should_stop(self, step: int) -> bool:
        """A signal arrived; under DDP only at a logging step, where the ranks have agreed on it."""
        return self.stop_signal is not None and (not self.dist.enabled or self.should_log(step))

    def should_pause(self, step: int, stop_after_steps: int | None) -> bool:
        return self.should_stop(step) or (stop_after_steps is not None and step >= stop_after_steps)

    def should_checkpoint(self, step: int) -> bool:
        """Every ``checkpoint_every_n_steps`` steps inside an epoch (its end has a checkpoint of its own)."""
        every = self.options.checkpoint_every_n_steps
        return bool(every) and step % every == 0 and self.step_in_epoch < len(self.data.train)

    def should_evaluate(self, epoch: int) -> bool:
        """After every ``val_every_n_epochs``-th epoch (counted from 1) and after the last (by epochs or max_steps);
        never without a validation split."""
        if self.data.val is None:
            return False
        return epoch % self.options.val_every_n_epochs == 0 or epoch >= self.options.epochs or self.max_steps_reached()

    @property
    def last_step(self) -> int:
        """The index of the last step taken (the first step is 0): where the numbers that follow it are logged
        (the loss scale after it, the epoch's totals and scores), so a checkpoint after it covers every event at
        steps < ``global_step``, and a resume purges exactly what a killed attempt logged after the checkpoint.
        The run's end (test scores) is logged at ``global_step``: a resume, even of a finished run, redoes it."""
        return self.global_step - 1

    def max_steps_reached(self) -> bool:
        return self.options.max_steps is not None and self.global_step >= self.options.max_steps

    # ------------------------------------------------------------------------------------------ actions
    def _batches(self):
        if self.full_batch:  # one step on the whole set; resumed after it: none
            return [(None, None)][self.step_in_epoch:]
        return self.data.train

    def _step(self, x: torch.Tensor | None, y: torch.Tensor | None) -> StepResult:
        if not needs_closure(self.optimizer):
            return train_step(self.forward_model, self.criterion, self.optimizer, self.precision, x, y,
                              clip=self.clip, skip_nonfinite=self.options.on_nan == "skip")
        batches, n = ([(x, y)], len(y)) if x is not None else (self.data.train, len(self.data.train.labels))
        return closure_step(self.forward_model, self.criterion, self.optimizer, self.precision, batches, n,
                            clip=self.clip)

    def _count(self, result: StepResult) -> None:
        """Add the step to the epoch's totals (unless skipped) and to the step log, on the device; advance the
        counters."""
        self.step_in_epoch += 1
        self.global_step += 1
        n = len(result.labels)
        correct = (result.logits.argmax(1) == result.labels).sum()
        if not result.skipped:
            self.totals.add(result.loss, correct, n)
        self.steps.add(self.last_step, self.epoch, self.optimizer.param_groups[0]["lr"], result, correct)
        self.train_images += n * self.dist.world_size

    def _show(self, bar: EpochBar, row: tuple | None) -> None:
        if row is not None:
            images = self.step_in_epoch * self.data.train.global_batch_size
            bar.show(row[2], row[3], row[1], images / max(self.stopwatch.epoch_so_far(), 1e-9))

    def _agree_on_stop(self) -> None:
        """Under DDP every rank must stop after the same step, so at each logging step the ranks agree on the
        signal (the max over ranks): a rank stopping alone would leave the others in an all-reduce."""
        if self.dist.enabled and self.should_log(self.global_step):
            self.stop_signal = max_over_ranks(self.stop_signal or 0, self.dist, self.device) or None

    def _request_stop(self, signum: int) -> None:
        if self.stop_signal is None:  # a repeated signal changes nothing: the first one is reported
            self.stop_signal = signum

    def _pause(self) -> dict:
        """Checkpoint here; raise Interrupted after a signal, else return the unfinished run's summary."""
        self.save_checkpoint()
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal, self.global_step, self.continue_with)
        return self.summary(finished=False)

    def _end_epoch(self, train: dict, val: dict | None, val_ema: dict | None = None) -> None:
        """Record the epoch (val_loss, val_acc only when ``val`` was measured; val_ema_* the EMA's) and
        checkpoint it."""
        self.epoch += 1
        self.step_in_epoch = 0
        self.steps.new_epoch()
        scores = {} if val is None else {"val_loss": val["loss"], "val_acc": val["acc"]}
        if val_ema is not None:
            scores.update({"val_ema_loss": val_ema["loss"], "val_ema_acc": val_ema["acc"]})
        seconds = self.stopwatch.epoch
        self.logger.epoch({"epoch": self.epoch, **train, **scores, "lr": self.optimizer.param_groups[0]["lr"],
                           "epoch_time": seconds, "global_step": self.global_step})
        log.info("epoch %d: train_loss %.4f train_acc %.4f%s (%.1fs)", self.epoch, train["train_loss"],
                 train["train_acc"], "".join(f" {k} {v:.4f}" for k, v in scores.items()), seconds)
        scalars = {"train/epoch_loss": train["train_loss"], "train/epoch_acc": train["train_acc"]}
        improved = val is not None and val["acc"] > self.best_val_acc
        if val is not None:
            self.best_val_acc, self.final_val_acc = max(self.best_val_acc, val["acc"]), val["acc"]
            scalars.update({"val/loss": val["loss"], "val/acc": val["acc"], "val/best_acc": self.best_val_acc})
            if (best_loss := self.best_val_loss()) is not None:  # None while every val loss so far was nan
                scalars["val/best_loss"] = best_loss
        if val_ema is not None:
            scalars.update({"val_ema/loss": val_ema["loss"], "val_ema/acc": val_ema["acc"]})
        scalars.update(self.time_scalars())
        self.logger.scalars(scalars, self.last_step)
        self.save_checkpoint(best=improved)

    def _finish(self) -> dict:
        test = self.test()
        self.logger.epoch({"epoch": self.epoch, **test})
        self.logger.scalars({f"test/{k[5:]}": v for k, v in test.items() if isinstance(v, float)}, self.global_step)
        val_losses = self.val_losses()
        summary = {**self.summary(finished=True), **test, "best_val_loss": min(val_losses, default=None),
                   "final_val_loss": val_losses[-1] if val_losses else None}
        self.logger.hparams(self.config.get("hparams", {}),
                            [tag for tag, key in HPARAM_METRICS.items() if summary.get(key) is not None])
        self.logger.summary(summary)
        return summary

    def test(self) -> dict:
        """The test set, scored once at the end (training/evaluation.py's ``test_scores``), the EMA's weights too."""
        best = None if self.data.val is None else self.run_dir / "checkpoints" / "best.pt"
        scores = test_scores(self.model, lambda: self.evaluate(self.data.test, label="test"), best, self.global_step,
                             self.data.val.num_examples if self.data.val is not None else None)
        if self.ema is not None and not self.ema.lookahead:  # with lookahead the last weights are the EMA
            ema = self._evaluate_ema(self.data.test, label="test (ema)")
            scores.update({"test_loss_ema": ema["loss"], "test_acc_ema": ema["acc"]})
        return scores

    # ------------------------------------------------------------------------------------- evaluation
    def evaluate(self, loader=None, model: nn.Module | None = None, label: str = "val") -> dict[str, float]:
        """``{"loss", "acc"}`` of ``model`` (default: the trained one) over ``loader`` (default: val); ``label``
        names its progress bar."""
        return evaluate(model or self.model, loader or self.data.val, self.precision, self.options.tta, self.dist,
                        self.device, label if self.options.progress_bar else None)

    def _evaluate_ema(self, loader=None, label: str = "val (ema)") -> dict[str, float] | None:
        """The EMA's weights scored like the trained ones (None without an EMA)."""
        return None if self.ema is None else self.evaluate(loader, self.ema.module, label)

    def val_losses(self) -> list[float]:
        """Every epoch's val loss so far, from metrics.jsonl (carried across resumes; none on ranks that do not
        write)."""
        return [r["val_loss"] for r in self.logger.records() if r.get("val_loss") is not None]

    def best_val_loss(self) -> float | None:
        return min(self.val_losses(), default=None)

    def time_scalars(self) -> dict:
        """Training time so far and its mean throughput: at the run's end these are summary.json's values."""
        total = self.stopwatch.total
        return {"time/train_seconds": total, **({"time/images_per_sec": self.train_images / total} if total else {})}

    def summary(self, finished: bool) -> dict:
        return {"params": sum(p.numel() for p in self.model.parameters()),
                "best_val_acc": None if self.data.val is None else self.best_val_acc,
                "final_val_acc": self.final_val_acc, "epochs": self.epoch,
                "global_step": self.global_step, "finished": finished, "train_time": self.stopwatch.total,
                "train_images_per_sec": self.train_images / self.stopwatch.total if self.stopwatch.total else None}
