"""The Trainer: one visible loop of epochs of steps, in nanoGPT's shape.

Each pass of ``fit``'s inner loop, top to bottom:
    lr = schedule(global_step) -> train_step (training/step.py) -> count it -> update the weight EMA if due
    (training/ema.py) -> every ``log_every_n_steps``: log (one device synchronisation) -> pause if asked (a signal,
    ``stop_after_steps``) -> checkpoint if due -> stop at ``max_steps``
and after each epoch: the epoch's training totals -> evaluate if due (the EMA's weights too) -> record the epoch
and checkpoint it.
Decisions (``should_*``) are pure checks of the counters; every action is a call in the loop. Closure optimizers
(L-BFGS) step once per batch (``closure=per_batch``) or once per epoch on the whole set (``full_batch``).
"""
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from data import ImageData
from training import checkpoint
from training.compiling import maybe_compile
from training.distributed import DistEnv, max_over_ranks, wrap_model
from training.ema import WeightEMA
from training.evaluation import evaluate, test_scores
from training.logger import RunLogger
from training.meters import EpochTotals, PendingSteps, Stopwatch
from training.options import TrainerOptions
from training.progress import EpochBar
from training.precision import Precision
from training.profiling import profiling
from training.signals import Interrupted, stop_signals_to
from training.step import GradientClip, StepResult, closure_step, needs_closure, train_step
from utils.errors import UserError
from utils.seed import rng_state, set_rng_state

log = logging.getLogger(__name__)


# The HPARAMS tab's metric columns (summary.json keys): how well, and how fast.
HPARAM_METRICS = ("best_val_acc", "final_val_acc", "best_val_loss", "final_val_loss", "test_acc", "test_loss",
                  "wall_time", "train_images_per_sec")


class DivergenceError(UserError, RuntimeError):
    """The loss became non-finite; the last good checkpoint is left as it was."""


@dataclass(frozen=True)
class Runtime:
    """Where a run executes: its device, precision, output folder and process group."""
    device: torch.device
    precision: Precision
    run_dir: Path
    dist: DistEnv = DistEnv()


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, data: ImageData,
                 logger: RunLogger, runtime: Runtime, options: TrainerOptions = TrainerOptions(), *,
                 monitor=None, config: dict | None = None, continue_with: str | None = None):
        self.model, self.optimizer, self.scheduler, self.data, self.logger = model, optimizer, scheduler, data, logger
        self.options, self.monitor, self.config = options, monitor, config or {}
        # The overrides that continue this run from its checkpoint (run.py names the sweep's directory in a sweep)
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
        self.best_val_acc, self.final_val_acc, self.last_finite_loss = 0.0, None, float("nan")
        self.skipped_steps, self.train_images = 0, 0  # skipped: fp16 steps the scaler dropped on overflow
        self.nan_skipped = 0  # steps of this epoch that on_nan=skip dropped
        self.saved_step: int | None = None  # the step of the last checkpoint written or resumed from
        self.stopwatch = Stopwatch(device=self.device)
        self.totals, self.pending = EpochTotals(self.device), PendingSteps()
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
                            self._show(bar, self._log_steps())
                            self._agree_on_stop()
                        if self.should_pause(self.global_step, stop_after_steps):
                            self._log_steps()
                            self.stopwatch.stop()
                            bar.close()
                            return self._pause()
                        if self.should_checkpoint(self.global_step):
                            self._log_steps()
                            self.stopwatch.stop()  # the checkpoint holds the training time; writing it is not training
                            self.save_checkpoint()
                            self.stopwatch.start()
                        if self.max_steps_reached():
                            break
                    self._log_steps()
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
        """Add the step to the epoch's totals (a skipped step to the skip count) and the pending log, on the
        device; advance the counters."""
        self.step_in_epoch += 1
        self.global_step += 1
        n = len(result.labels)
        correct = (result.logits.argmax(1) == result.labels).sum()
        if result.skipped:
            self._skipped(float(result.loss))
        else:
            self.totals.add(result.loss, correct, n)
        self.pending.add(self.global_step - 1, self.optimizer.param_groups[0]["lr"], result, correct)
        self.train_images += n * self.dist.world_size

    def _skipped(self, loss: float) -> None:
        """on_nan=skip dropped a step: past ``max_skipped_fraction`` of an epoch's steps that is divergence, not
        a bad batch, and stops the run."""
        self.nan_skipped += 1
        steps = len(self.data.train)  # closure optimizers never skip (training/step.py)
        if self.nan_skipped > self.options.max_skipped_fraction * steps:
            raise DivergenceError(
                f"trainer.on_nan=skip skipped {self.nan_skipped} of the {steps} steps of epoch {self.epoch + 1} "
                f"(loss {loss} at step {self.global_step - 1}), more than trainer.max_skipped_fraction="
                f"{self.options.max_skipped_fraction:g}; {self._divergence_advice()}")

    def _divergence_advice(self) -> str:
        """What to do after divergence: the checkpoint to continue from, with settings a resume applies."""
        if self.saved_step is None:
            return "no checkpoint was written yet. Start again with a lower optimizer.lr or trainer.clip.mode=norm"
        return (f"the last checkpoint (step {self.saved_step}) is intact. Continue from it at a lower LR: the same "
                f"command plus {self.continue_with} optimizer.lr=<lower> (or trainer.clip.mode=norm)")

    def _log_steps(self) -> tuple | None:
        """Write the pending steps' numbers (one synchronisation), stopping on a non-finite loss unless
        ``on_nan=skip``; returns the last step's row (step, lr, loss, acc, grad_norm, clipped, clip threshold)."""
        rows = self.pending.drain()
        if self.monitor is not None:
            self.monitor.flush()
        for step, lr, loss, acc, norm, clipped, threshold in rows:
            if not math.isfinite(loss):
                if self.options.on_nan == "stop":
                    raise DivergenceError(
                        f"loss became {loss} at step {step} (lr {lr:.4g}, last finite loss "
                        f"{self.last_finite_loss:.4g}); {self._divergence_advice()}")
                continue
            self.last_finite_loss = loss
            self.logger.scalars({"train/loss": loss, "train/acc": acc, "lr": lr, "watch/grad_norm": norm,
                                 "watch/clip_fired": clipped}, step)
            if self.clip.auto is not None:
                self.logger.scalars({"watch/clip_threshold": threshold}, step)
        if rows and self.precision.uses_scaler:
            self.skipped_steps += sum(not math.isfinite(row[4]) for row in rows)
            self.logger.scalars({"watch/amp_loss_scale": self.precision.scale(),
                                 "watch/amp_skipped_steps": self.skipped_steps}, self.last_step)
        return rows[-1] if rows else None

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
        self.step_in_epoch = self.nan_skipped = 0
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
            scalars.update({"val/loss": val["loss"], "val/acc": val["acc"]})
            self.best_val_acc, self.final_val_acc = max(self.best_val_acc, val["acc"]), val["acc"]
        if val_ema is not None:
            scalars.update({"val_ema/loss": val_ema["loss"], "val_ema/acc": val_ema["acc"]})
        self.logger.scalars(scalars, self.last_step)
        self.save_checkpoint(best=improved)

    def _finish(self) -> dict:
        test = self.test()
        self.logger.epoch({"epoch": self.epoch, **test})
        self.logger.scalars({f"test/{k[5:]}": v for k, v in test.items() if isinstance(v, float)}, self.global_step)
        val_losses = [r["val_loss"] for r in self.logger.records() if r.get("val_loss") is not None]
        summary = {**self.summary(finished=True), **test, "best_val_loss": min(val_losses, default=None),
                   "final_val_loss": val_losses[-1] if val_losses else None}
        self.logger.hparams(self.config.get("hparams", {}),
                            {f"hparam/{k}": summary[k] for k in HPARAM_METRICS if summary.get(k) is not None},
                            self.global_step)
        self.logger.summary(summary)
        return summary

    def test(self) -> dict:
        """The test set, scored once at the end (training/evaluation.py's ``test_scores``), the EMA's weights too."""
        best = None if self.data.val is None else self.run_dir / "checkpoints" / "best.pt"
        scores = test_scores(self.model, lambda: self.evaluate(self.data.test), best, self.global_step,
                             self.data.val.num_examples if self.data.val is not None else None)
        if self.ema is not None and not self.ema.lookahead:  # with lookahead the last weights are the EMA
            ema = self._evaluate_ema(self.data.test)
            scores.update({"test_loss_ema": ema["loss"], "test_acc_ema": ema["acc"]})
        return scores

    # ------------------------------------------------------------------------------------- evaluation
    def evaluate(self, loader=None, model: nn.Module | None = None) -> dict[str, float]:
        """``{"loss", "acc"}`` of ``model`` (default: the trained one) over ``loader`` (default: val)."""
        return evaluate(model or self.model, loader or self.data.val, self.precision, self.options.tta, self.dist,
                        self.device)

    def _evaluate_ema(self, loader=None) -> dict[str, float] | None:
        """The EMA's weights scored like the trained ones (None without an EMA)."""
        return None if self.ema is None else self.evaluate(loader, self.ema.module)

    def summary(self, finished: bool) -> dict:
        return {"params": sum(p.numel() for p in self.model.parameters()),
                "best_val_acc": None if self.data.val is None else self.best_val_acc,
                "final_val_acc": self.final_val_acc, "epochs": self.epoch,
                "global_step": self.global_step, "finished": finished, "wall_time": self.stopwatch.total,
                "train_images_per_sec": self.train_images / self.stopwatch.total if self.stopwatch.total else None}

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.precision.state_dict(),
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "best_val_acc": self.best_val_acc, "final_val_acc": self.final_val_acc,
                "train_seconds": self.stopwatch.total, "train_images": self.train_images,
                "skipped_steps": self.skipped_steps, "nan_skipped": self.nan_skipped,
                "accumulators": self.totals.state(),
                "rng": rng_state(), "world_size": self.dist.world_size, "config": self.config,
                "autoclip": self.clip.auto.state_dict() if self.clip.auto is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.best_val_acc, self.final_val_acc = state["best_val_acc"], state["final_val_acc"]
        self.stopwatch, self.train_images = Stopwatch(state["train_seconds"], self.device), state["train_images"]
        self.skipped_steps, self.nan_skipped = state["skipped_steps"], state.get("nan_skipped", 0)
        self.totals = EpochTotals(self.device, state["accumulators"])
        if self.clip.auto is not None and state.get("autoclip") is not None:
            self.clip.auto.load_state_dict(state["autoclip"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise checkpoint.CheckpointError(
                    "the checkpoint holds no weight EMA, but trainer.ema.decay is set: resume with "
                    "trainer.ema.decay=null, or start a new run")
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])

    def save_checkpoint(self, best: bool = False) -> None:
        self.logger.flush()  # the events the checkpoint covers reach the disk before it: a SIGKILL loses none
        if self.dist.is_main:
            checkpoint.save(self.state_dict(), self.run_dir / "checkpoints", keep_last_k=self.options.keep_last_k,
                            best=best)
        self.saved_step = self.global_step

    def resume(self, path: str | Path) -> None:
        state = checkpoint.load(path)
        checkpoint.check_model_matches(state, self.model, path)
        checkpoint.check_config_matches(state, self.config.get("resolved"), path)
        if state["world_size"] != self.dist.world_size and state["step_in_epoch"]:
            raise checkpoint.CheckpointError(
                f"{path} was saved mid-epoch by {state['world_size']} processes; resume it with the same number")
        configured = checkpoint.hyperparameters(self.optimizer, self.scheduler)
        try:
            self.load_state_dict(state)
        except UserError:  # e.g. the schedule's own refusal (another run length): it says what to do
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:  # e.g. a malformed RNG state
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else "no details"
            raise checkpoint.CheckpointError(f"{path} does not fit this run ({type(e).__name__}: {reason}); resume "
                                             f"with the config that wrote it, or from another file") from None
        for change in checkpoint.reapply_hyperparameters(configured, self.optimizer, self.scheduler):
            log.info("resumed with a changed config: %s (the config's value applies from here on)", change)
        self.saved_step = self.global_step
        self.logger.truncate_epochs(self.epoch)
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.global_step)

    def init_from(self, path: str | Path) -> None:
        """A new run starting from a checkpoint's weights (and batch-norm statistics): the optimizer, the schedule,
        the counters and the RNGs stay this run's own (fine-tuning, a warm start)."""
        state = checkpoint.load(path)
        checkpoint.check_model_matches(state, self.model, path)
        self.model.load_state_dict(state["model"])
        if self.ema is not None:  # the average starts from the weights the run starts from
            self.ema.module.load_state_dict(state["model"])
        log.info("weights from %s (its epoch %d, step %d); a fresh optimizer and schedule", path, state["epoch"],
                 state["global_step"])

