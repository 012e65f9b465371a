"""The Trainer: sanity checks, then one readable loop of epochs of steps.

One step, in order (nanoGPT's shape):
    lr = schedule(global_step)  -> forward under autocast -> (scaled) backward -> unscale
    -> clip (pre-clip norm recorded) -> optimizer step (skipped by the scaler on fp16 overflow)
    -> zero grads (set_to_none)
Per-step numbers stay on the device and are read once every ``log_every_n_steps`` steps (one
synchronisation per interval, not per step). Closure optimizers (L-BFGS) get a closure that
re-evaluates the loss: ``closure=per_batch`` steps once per batch on that batch,
``closure=full_batch`` steps once per epoch on the whole training set.
"""
import logging
import math
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data import ImageData
from training import checkpoint
from training.clipping import clip_gradients
from training.distributed import DistEnv, all_reduce_sum, broadcast_buffers, max_over_ranks
from training.logger import RunLogger
from training.precision import Precision
from utils.seed import rng_state, set_rng_state

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """The loss became non-finite; the last good checkpoint is left as it was."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved at the step boundary."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved. Continue with "
                         f"the same command plus trainer.resume=auto hydra.run.dir={run_dir}")
        self.signum = signum


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, data: ImageData, *,
                 run_dir: str | Path, logger: RunLogger, precision: Precision, device: torch.device,
                 epochs: int, max_steps: int | None = None, clip_mode: str = "none", clip_max: float = 1.0,
                 label_smoothing: float = 0.0, closure: str = "per_batch", on_nan: str = "stop",
                 checkpoint_every_n_steps: int | None = None, keep_last_k: int = 1,
                 progress_bar: bool = False, dist: DistEnv = DistEnv(), forward_model: nn.Module | None = None,
                 optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
                 monitor=None, tta: str = "none", val_every_n_epochs: int = 1,
                 config: dict | None = None):
        self.model, self.optimizer, self.scheduler, self.data = model, optimizer, scheduler, data
        self.forward_model = forward_model or model  # DDP- or torch.compile-wrapped view of ``model``
        self.optimizer_factory = optimizer_factory
        self.run_dir, self.logger, self.precision, self.device = Path(run_dir), logger, precision, device
        self.epochs, self.max_steps = epochs, max_steps
        self.clip_mode, self.clip_max = clip_mode, clip_max
        self.closure_mode, self.on_nan = closure, on_nan
        self.checkpoint_every_n_steps, self.keep_last_k = checkpoint_every_n_steps, keep_last_k
        self.progress_bar, self.dist, self.monitor, self.config = progress_bar, dist, monitor, config or {}
        self.tta, self.val_every_n_epochs = tta, val_every_n_epochs
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.needs_closure = getattr(optimizer, "requires_closure", False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Counters: epochs completed; position inside the current epoch; optimizer steps taken.
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_val_acc, self.final_val_acc, self.last_finite_loss = 0.0, None, float("nan")
        self.skipped_steps = 0  # fp16 steps the scaler skipped on overflow
        self.train_seconds, self.train_images = 0.0, 0
        self._acc = self._zero_accumulators()
        self._pending: list[dict] = []  # per-step device tensors awaiting one sync
        self._stop_signal: int | None = None

    # ----------------------------------------------------------------------------------- public
    def sanity_check(self, **options):
        """Run the pre-flight checks on throw-away copies; the real run's weights and RNGs are untouched."""
        from training.sanity import run_checks
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            return run_checks(self, **options)

    def fit(self, stop_after_steps: int | None = None) -> dict:
        """Train to ``epochs`` (or ``max_steps``); ``stop_after_steps`` pauses early with a checkpoint."""
        self.logger.open(purge_step=self.global_step)  # hides events a killed attempt logged past this step
        self.logger.truncate_epochs(self.epoch)  # and its metric lines (also on a fresh start)
        with self._signals_to_checkpoint():
            try:
                while self.epoch < self.epochs and not self._max_steps_reached():
                    if self._stop_requested():  # the signal came during evaluation
                        self.save_checkpoint()
                        raise Interrupted(self._stop_signal, self.global_step, self.run_dir)
                    train_metrics = self._train_epoch(stop_after_steps)
                    if train_metrics is None:  # paused mid-epoch, checkpoint written
                        return self.summary(finished=False)
                    self._end_epoch(train_metrics, self.evaluate() if self._validates_this_epoch() else None)
                return self._finish()
            finally:
                self.logger.close()

    @torch.no_grad()
    def evaluate(self, loader=None) -> tuple[float, float]:
        """Mean loss and accuracy over ``loader`` (all ranks' shares summed), no augmentation but ``tta``'s.

        Runs the unwrapped model: weights are identical on every rank, and DDP's forward would sync buffers.
        """
        loader = loader or self.data.val
        broadcast_buffers(self.model, self.dist)
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, count
        loader.set_epoch(0)
        for x, y in loader:
            with self.precision.autocast():
                logits = self._test_time_logits(x)
            totals += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum").double(),
                                   (logits.argmax(1) == y).sum().double(), torch.tensor(len(y), device=self.device)])
        loss_sum, correct, count = all_reduce_sum(totals, self.dist).tolist()
        self.model.train()
        return loss_sum / count, correct / count

    def _test_time_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits under test-time augmentation (airbench's levels). ``none``: f(x). ``flip``: m(x) = (f(x) +
        f(mirror x)) / 2. ``flip_translate``: m(x) / 2 + (m(x shifted 1 px down-right) + m(x shifted 1 px
        up-left)) / 4, the shifts filling the vacated edge by reflection."""
        if self.tta == "none":
            return self.model(x)

        def mirrored(v):
            return (self.model(v) + self.model(v.flip(3))) / 2

        if self.tta == "flip":
            return mirrored(x)
        padded, (h, w) = F.pad(x, (1, 1, 1, 1), mode="reflect"), x.shape[2:]
        return mirrored(x) / 2 + (mirrored(padded[:, :, :h, :w]) + mirrored(padded[:, :, 2:, 2:])) / 4

    # ------------------------------------------------------------------------------- the loop
    def _train_epoch(self, stop_after_steps: int | None) -> dict | None:
        loader = self.data.train
        loader.set_epoch(self.epoch, start_batch=self.step_in_epoch)
        self.forward_model.train()
        bar = tqdm(total=len(loader), initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{self.epochs}",
                   disable=not self.progress_bar, leave=False, dynamic_ncols=True)
        full_batch = self.closure_mode == "full_batch" and self.needs_closure
        batches = [(None, None)][self.step_in_epoch:] if full_batch else loader  # resumed after its one step: none
        started = self._clock = time.perf_counter()
        self._epoch_seconds = 0.0
        for x, y in batches:
            self._train_step(x, y)
            self.step_in_epoch += 1
            self.global_step += 1
            bar.update(1)
            if self.global_step % self.logger.log_every_n_steps == 0:
                self._flush(bar, time.perf_counter() - started)
            if self._should_pause(stop_after_steps):
                self._account_time()
                self._flush(bar, 0.0)
                bar.close()
                self.save_checkpoint()
                if self._stop_signal is not None:
                    raise Interrupted(self._stop_signal, self.global_step, self.run_dir)
                return None
            if self._max_steps_reached():
                break
        self._account_time()
        self._flush(bar, 0.0)
        bar.close()
        loss_sum, correct, count = all_reduce_sum(self._acc.clone(), self.dist).tolist()
        self._acc = self._zero_accumulators()
        return {"train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1)}

    def _train_step(self, x: torch.Tensor | None, y: torch.Tensor | None) -> None:
        self.scheduler.step_update(self.global_step)
        if self.needs_closure:
            loss, logits, y, norm, clipped = self._closure_step(x, y)
        else:
            with self.precision.autocast():
                logits = self.forward_model(x)  # (B, num_classes)
                loss = self.criterion(logits, y)
            if self.on_nan == "skip" and not torch.isfinite(loss):  # a sync per step: the price of skipping
                self.optimizer.zero_grad(set_to_none=True)
                self._record(loss, logits, y, torch.tensor(float("nan")), torch.tensor(False))
                return
            self.precision.backward(loss)
            self.precision.unscale_(self.optimizer)
            norm, clipped = self._clip_and_observe()
            self.precision.step(self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
        self._record(loss, logits, y, norm, clipped)

    def _clip_and_observe(self):
        result = clip_gradients(self.params, self.clip_mode, self.clip_max)
        if self.monitor is not None:
            self.monitor.observe(self.model, self.global_step)
        return result.total_norm, result.clipped

    def _closure_step(self, x, y):
        """One step of a closure optimizer; returns the first evaluation's loss, logits and labels, and the clip."""
        first: dict = {}

        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            batches = [(x, y)] if x is not None else self.data.train
            total = len(self.data.train.labels) if x is None else len(y)
            loss_sum = torch.zeros((), device=self.device)
            for bx, by in batches:
                with self.precision.autocast():
                    logits = self.forward_model(bx)
                    loss = self.criterion(logits, by) * (len(by) / total)
                loss.backward()
                loss_sum += loss.detach()
                first.setdefault("logits", (logits.detach(), by))
            first.setdefault("clip", self._clip_and_observe())
            return loss_sum

        loss = self.optimizer.step(closure)
        logits, y = first["logits"]
        return loss, logits, y, *first["clip"]

    def _record(self, loss, logits, y, norm, clipped) -> None:
        """Accumulate on the device; nothing here waits for the device."""
        with torch.no_grad():
            correct = (logits.argmax(1) == y).sum()
            n = len(y)
            self._acc += torch.stack([loss.detach().double() * n, correct.double(),
                                      torch.tensor(n, dtype=torch.float64, device=loss.device)])
            self.train_images += n * self.dist.world_size
            self._pending.append({"step": self.global_step, "loss": loss.detach().float(),
                                  "acc": correct.float() / n, "grad_norm": norm.float(),
                                  "clipped": clipped.float(), "lr": self.optimizer.param_groups[0]["lr"]})

    def _flush(self, bar, seconds: float) -> None:
        """One synchronisation: write the pending per-step numbers, guard against divergence."""
        if not self._pending:
            return
        steps = self._pending
        self._pending = []
        values = torch.stack([torch.stack([s["loss"], s["acc"], s["grad_norm"], s["clipped"]]) for s in steps])
        for s, (loss, acc, norm, clipped) in zip(steps, values.tolist()):
            if not math.isfinite(loss):
                if self.on_nan == "stop":
                    raise DivergenceError(
                        f"loss became {loss} at step {s['step']} (lr {s['lr']:.4g}, last finite loss "
                        f"{self.last_finite_loss:.4g}); the last checkpoint is intact. Lower the LR, add "
                        f"trainer.clip.mode=norm, or set trainer.on_nan=skip")
                continue
            self.last_finite_loss = loss
            self.logger.scalars({"train/loss": loss, "train/acc": acc, "lr": s["lr"], "grad_norm": norm,
                                 "clip/fired": clipped}, s["step"])
        if self.precision.uses_scaler:
            self.skipped_steps += sum(not math.isfinite(row[2]) for row in values.tolist())
            self.logger.scalars({"amp/loss_scale": self.precision.scale(),
                                 "amp/skipped_steps": self.skipped_steps}, self.global_step)
        if seconds > 0:
            bar.set_postfix(loss=f"{values[-1, 0]:.4f}", acc=f"{values[-1, 1]:.3f}",
                            lr=f"{steps[-1]['lr']:.3g}",
                            img_s=f"{self.step_in_epoch * self.data.train.global_batch_size / seconds:.0f}",
                            refresh=False)

    def _validates_this_epoch(self) -> bool:
        """Evaluate after every ``val_every_n_epochs``-th epoch and after the last (by epochs or max_steps)."""
        done = self.epoch + 1
        return done % self.val_every_n_epochs == 0 or done >= self.epochs or self._max_steps_reached()

    def _end_epoch(self, train: dict, val: tuple[float, float] | None) -> None:
        """Record the epoch (val_loss, val_acc only when ``val`` was measured) and checkpoint it."""
        self.epoch += 1
        self.step_in_epoch = 0
        scores = {} if val is None else {"val_loss": val[0], "val_acc": val[1]}
        self.logger.epoch({"epoch": self.epoch, **train, **scores, "lr": self.optimizer.param_groups[0]["lr"],
                           "epoch_time": self._epoch_seconds, "global_step": self.global_step})
        log.info("epoch %d: train_loss %.4f train_acc %.4f%s (%.1fs)", self.epoch, train["train_loss"],
                 train["train_acc"], "".join(f" {k} {v:.4f}" for k, v in scores.items()), self._epoch_seconds)
        scalars = {"train/epoch_loss": train["train_loss"], "train/epoch_acc": train["train_acc"]}
        improved = False
        if val is not None:
            scalars.update({"val/loss": val[0], "val/acc": val[1]})
            improved = val[1] > self.best_val_acc
            self.best_val_acc = max(self.best_val_acc, val[1])
            self.final_val_acc = val[1]
        self.logger.scalars(scalars, self.global_step)
        self.save_checkpoint(best=improved)

    def _finish(self) -> dict:
        summary = self.summary(finished=True)
        self.logger.hparams(self.config.get("hparams", {}), {"hparam/best_val_acc": summary["best_val_acc"],
                                                             "hparam/final_val_acc": summary["final_val_acc"]})
        self.logger.summary(summary)
        return summary

    def summary(self, finished: bool) -> dict:
        return {"params": sum(p.numel() for p in self.model.parameters()), "best_val_acc": self.best_val_acc,
                "final_val_acc": self.final_val_acc, "epochs": self.epoch,
                "global_step": self.global_step, "finished": finished, "wall_time": self.train_seconds,
                "train_images_per_sec": self.train_images / self.train_seconds if self.train_seconds else None}

    # ---------------------------------------------------------------------------- bookkeeping
    def _zero_accumulators(self) -> torch.Tensor:
        return torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n

    def _account_time(self) -> None:
        """Add the time since the clock last started to the epoch's and the run's training time."""
        now = time.perf_counter()
        self._epoch_seconds += now - self._clock
        self.train_seconds += now - self._clock
        self._clock = now

    def _max_steps_reached(self) -> bool:
        return self.max_steps is not None and self.global_step >= self.max_steps

    def _should_pause(self, stop_after_steps: int | None) -> bool:
        if self._stop_requested() or (stop_after_steps is not None and self.global_step >= stop_after_steps):
            return True
        every = self.checkpoint_every_n_steps
        if every and self.global_step % every == 0 and self.step_in_epoch < len(self.data.train):
            self._flush(None, 0.0)
            self._account_time()  # the checkpoint holds the training time so far; writing it is not training
            self.save_checkpoint()
            self._clock = time.perf_counter()
        return False

    def _stop_requested(self) -> bool:
        """A signal arrived. Under DDP every rank must stop after the same step, so the ranks agree (the max
        over ranks) once per logging interval: a rank stopping alone would leave the others in an all-reduce."""
        if not self.dist.enabled:
            return self._stop_signal is not None
        if self.global_step % self.logger.log_every_n_steps:
            return False
        self._stop_signal = max_over_ranks(self._stop_signal or 0, self.dist, self.device) or None
        return self._stop_signal is not None

    @contextmanager
    def _signals_to_checkpoint(self):
        """SIGINT/SIGTERM: finish the current step, save, and stop (see ``Interrupted``)."""
        def request_stop(signum, _frame):
            self._stop_signal = signum
        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.precision.state_dict(),
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "best_val_acc": self.best_val_acc, "final_val_acc": self.final_val_acc,
                "train_seconds": self.train_seconds, "train_images": self.train_images,
                "skipped_steps": self.skipped_steps, "accumulators": self._acc.cpu(),
                "rng": rng_state(), "world_size": self.dist.world_size, "config": self.config}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.best_val_acc, self.final_val_acc = state["best_val_acc"], state["final_val_acc"]
        self.train_seconds, self.train_images = state["train_seconds"], state["train_images"]
        self.skipped_steps = state["skipped_steps"]
        self._acc = state["accumulators"].to(self.device)
        set_rng_state(state["rng"])

    def save_checkpoint(self, best: bool = False) -> None:
        if self.dist.is_main:
            checkpoint.save(self.state_dict(), self.run_dir / "checkpoints", keep_last_k=self.keep_last_k, best=best)

    def resume(self, path: str | Path) -> None:
        state = checkpoint.load(path)
        checkpoint.check_model_matches(state, self.model, path)
        checkpoint.check_config_matches(state, self.config.get("resolved"), path)
        if state["world_size"] != self.dist.world_size and state["step_in_epoch"]:
            raise checkpoint.CheckpointError(
                f"{path} was saved mid-epoch by {state['world_size']} processes; resume it with the same number")
        self.load_state_dict(state)
        self.logger.truncate_epochs(self.epoch)
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.global_step)
