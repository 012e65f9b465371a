"""What survives a restart: the Trainer's checkpoint (weights, optimizer, schedule, loss scaler, counters, RNGs, the
step log's counts, AutoClip's history, the weight EMA), writing it, resuming from it exactly, and starting a new run
from its weights (``init_from``). A mixin of training/trainer.py's Trainer, whose attributes it reads."""
import logging
from pathlib import Path

from training import checkpoint
from training.meters import EpochTotals, Stopwatch
from utils.errors import UserError
from utils.seed import rng_state, set_rng_state

log = logging.getLogger(__name__)


class TrainerState:
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.precision.state_dict(),
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "best_val_acc": self.best_val_acc, "final_val_acc": self.final_val_acc,
                "train_seconds": self.stopwatch.total, "train_images": self.train_images,
                **self.steps.state_dict(),
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
        self.steps.load_state_dict(state)
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
        self.steps.checkpointed(self.global_step, self.continue_with)

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
        self.steps.checkpointed(self.global_step, self.continue_with)
        self.logger.truncate_epochs(self.epoch)
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.global_step)

    def init_from(self, path: str | Path) -> None:
        """A new run starting from a checkpoint's weights (and batch-norm statistics): the optimizer, the schedule,
        the counters and the RNGs stay this run's own (fine-tuning, a warm start)."""
        instead = "give trainer.init_from=<a run's checkpoints/best.pt or last.pt>"
        state = checkpoint.load(path, instead)
        checkpoint.check_model_matches(state, self.model, path, "give trainer.init_from a checkpoint of this model, "
                                       "or the model config its run had")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:  # the average starts from the weights the run starts from
            self.ema.module.load_state_dict(state["model"])
        log.info("weights from %s (its epoch %d, step %d); a fresh optimizer and schedule", path, state["epoch"],
                 state["global_step"])

