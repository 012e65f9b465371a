"""Composition: a composed config in, a trained model's summary out.

``train(cfg)`` is what ``train.py`` calls under Hydra, and what tests call with a config composed by
``hydra.compose``. ``build_trainer`` is the only place that reads the config: it validates it, then calls
training/build.py's builders (runtime, model, data, schedule) with plain arguments. Order matters: validate the
config, build model and optimizer (their constructors check their arguments), and only then load data.
"""
import logging
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

import optimizers
from cli.provenance import record_launch
from cli.validate import SUPPLIED, check_known_keys, check_output_dir, validate
from training import checkpoint, distributed, rundir
from training.build import PLACEMENT, build_data, build_model, build_runtime, build_schedule
from training.options import CHECKS, TrainerOptions
from training.sanity import Recipe, SanityReport, run_checks
from training.step import GradientClip, needs_closure
from training.trainer import Trainer
from utils.errors import UserError
from utils.progress import show_progress
from utils.seed import seed_everything

log = logging.getLogger(__name__)


FRESH_MODEL_CHECKS = ("init_loss", "loss_decrease")  # what only a freshly initialised model must pass


class SanityError(UserError):
    """A pre-flight check failed with trainer.sanity=run."""

    exit_code = 1


def trainer_options(t: DictConfig, progress_bar: bool) -> TrainerOptions:
    return TrainerOptions(
        epochs=t.epochs, max_steps=t.max_steps, clip_mode=t.clip.mode, clip_max=t.clip.max,
        clip_percentile=t.clip.percentile, clip_window=t.clip.window,
        label_smoothing=t.label_smoothing, closure=t.closure, on_nan=t.on_nan,
        max_skipped_fraction=t.max_skipped_fraction,
        checkpoint_every_n_steps=t.checkpoint_every_n_steps, keep_last_k=t.keep_last_k, progress_bar=progress_bar,
        tta=t.tta, val_every_n_epochs=t.val_every_n_epochs, compile=t.compile,
        ema_decay=t.ema.decay, ema_every=t.ema.every, ema_warmup=t.ema.warmup, ema_lookahead=t.ema.lookahead,
        profile_steps=t.profile_steps)


def build_trainer(cfg: DictConfig, run_dir: str | Path) -> Trainer:
    validate(cfg, run_dir)  # and create the run directory, or say why it cannot be written
    check_known_keys(cfg, "data", supplied=PLACEMENT)
    check_known_keys(cfg, "model", supplied=SUPPLIED["model"])
    check_known_keys(cfg, "optimizer", supplied=SUPPLIED["optimizer"], read=("decay_norm_and_bias",))  # by build
    check_known_keys(cfg, "scheduler", supplied=SUPPLIED["scheduler"])
    t = cfg.trainer
    closure = getattr(get_class(cfg.optimizer._target_), "requires_closure", False)  # L-BFGS
    runtime = build_runtime(t.device, t.precision, t.loss_scale, run_dir, closure_optimizer=closure, tf32=t.tf32)
    distributed.check_supported(runtime.dist, closure_optimizer=closure, on_nan=t.on_nan)
    seed_everything(t.seed, t.deterministic)
    model = instantiate(cfg.model)
    memory_format = build_model(model, runtime, t.channels_last, t.norm_fp32)
    optimizer = optimizers.build(cfg.optimizer, model)
    progress = show_progress(t.progress_bar, runtime.dist.is_main, side_by_side=parallel_sweep_job())
    data = build_data(instantiate(cfg.data, _partial_=True), runtime, memory_format, model, progress)
    full_batch = needs_closure(optimizer) and t.closure == "full_batch"
    scheduler = build_schedule(instantiate(cfg.scheduler), optimizer, data, epochs=t.epochs, max_steps=t.max_steps,
                               full_batch=full_batch)
    env = runtime.dist
    logger = instantiate(cfg.logger)(run_dir=runtime.run_dir, enabled=env.is_main)
    log.info("device %s, precision %s, %s, %d process(es); global batch %d, base lr %g, %d steps", runtime.device,
             runtime.precision.mode, "channels_last" if memory_format == torch.channels_last else "NCHW",
             env.world_size, data.train.global_batch_size, optimizer.param_groups[0]["lr"], scheduler.total_steps)
    return Trainer(model, optimizer, scheduler, data, logger, runtime, trainer_options(t, progress),
                   monitor=instantiate(cfg.monitor)(logger) if "monitor" in cfg else None,
                   config={"resolved": OmegaConf.to_container(cfg, resolve=True), "hparams": hparams(cfg)},
                   continue_with=sweep_continue_with())


def parallel_sweep_job() -> bool:
    """Whether this job runs beside others: a sweep (``-m``) under the parallel launcher (joblib)."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return False
    return "joblib" in HydraConfig.get().launcher.get("_target_", "").lower()


def sweep_continue_with() -> str | None:
    """In a Hydra sweep (``-m``), the overrides that continue it: its directory, where each job finds its own (job
    directories are named by what the sweep varies, so ``trainer.resume=auto`` does not rename them). None
    outside a sweep: the Trainer names its run directory."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"trainer.resume=auto hydra.sweep.dir={Path(HydraConfig.get().sweep.dir).resolve()}"
    return None


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Build everything from ``cfg``, run the sanity checks (or resume), train; returns the summary."""
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    check_output_dir(run_dir)
    with rundir.claim(run_dir, cfg.trainer.resume) if distributed.env_from_os().is_main else nullcontext():
        trainer = build_trainer(cfg, run_dir)
        if trainer.dist.is_main:
            record_launch(trainer.run_dir)
        resume = resume_path(cfg.trainer.resume, trainer.run_dir)  # under DDP: rank 0's, on every rank
        if resume is not None:
            trainer.resume(resume)
            say_if_finished(trainer, resume)
        else:
            if cfg.trainer.init_from is not None:
                trainer.init_from(cfg.trainer.init_from)
            if cfg.trainer.sanity != "skip":
                run_sanity(trainer, cfg)
        try:
            summary = trainer.fit(stop_after_steps=cfg.trainer.pause_at_step)
            if not summary["finished"]:  # paused: a freshly built trainer resumes from the checkpoint just written
                log.info("paused at step %d (trainer.pause_at_step); a new trainer resumes from its checkpoint",
                         summary["global_step"])
                trainer = build_trainer(cfg, run_dir)
                trainer.resume(checkpoint.find_latest(trainer.run_dir / "checkpoints"))
                summary = trainer.fit()
            return summary
        finally:
            distributed.shutdown(trainer.dist)


def say_if_finished(trainer: Trainer, path: Path) -> None:
    """A resumed run that has nothing left to train says so (its end, test scores and summary, runs again)."""
    if trainer.epoch >= trainer.options.epochs or trainer.max_steps_reached():
        log.warning("%s holds a finished run (epoch %d, step %d; trainer.epochs=%d, max_steps=%s): nothing left to "
                    "train. To train on, resume with a larger trainer.epochs, or start a new run from its weights with "
                    "trainer.init_from=%s", path, trainer.epoch, trainer.global_step, trainer.options.epochs,
                    trainer.options.max_steps, path)


def sanity_check(trainer: Trainer, cfg: DictConfig) -> SanityReport:
    """The pre-flight checks (``cfg.sanity``) on copies of the trainer's model, trained as the run trains:
    its loss, precision, clipping and a fresh optimizer of ``cfg.optimizer``. The run's weights and RNGs stay."""
    recipe = Recipe(lambda m: optimizers.build(cfg.optimizer, m), trainer.criterion, trainer.precision,
                    GradientClip(trainer.clip.mode, trainer.clip.max_value, percentile=trainer.clip.percentile,
                                 window=trainer.clip.window), lockstep=trainer.dist.enabled)
    options = OmegaConf.to_container(cfg.sanity, resolve=True) if "sanity" in cfg else {}
    if cfg.trainer.get("init_from") is not None:  # trained weights: no loss near ln C at the start, none bound to fall
        options["checks"] = [c for c in options.get("checks", CHECKS) if c not in FRESH_MODEL_CHECKS]
    with torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else []):
        return run_checks(trainer.model, recipe, trainer.data, progress=trainer.options.progress_bar, **options)


def run_sanity(trainer: Trainer, cfg: DictConfig) -> None:
    """Run the checks, show rank 0's table, and stop (``trainer.sanity=run``) or warn if any rank's checks failed.
    Under DDP every rank checks its own copies on its own data, so the ranks agree on the verdict (none trains on
    alone) and rank 0 alone says it, naming the ranks that failed; the others exit with the same code, silent."""
    report = sanity_check(trainer, cfg)
    log.info("sanity checks (every number in sanity.txt):\n%s", report.table())
    if trainer.dist.is_main:
        (trainer.run_dir / "sanity.txt").write_text(report.table(details=True) + "\n")
    failed = [(rank, summary) for rank, summary in
              enumerate(distributed.gather_objects(None if report.passed else report.summary(), trainer.dist))
              if summary is not None]
    if not failed:
        return
    rank, summary = failed[0]
    where = f" on rank{'s' * (len(failed) > 1)} {', '.join(str(r) for r, _ in failed)} (rank {rank}: {summary})"
    message = "sanity check failed" + (where if trainer.dist.enabled else f": {summary}")
    if cfg.trainer.sanity == "run" and not trainer.dist.is_main:
        raise SystemExit(SanityError.exit_code)  # rank 0 says why
    if cfg.trainer.sanity == "run":
        raise SanityError(message + " (trainer.sanity=warn to train anyway)")
    if trainer.dist.is_main:
        log.warning(message)


def resume_path(resume: str | None, run_dir: Path) -> Path | None:
    """``auto``: this run directory's newest checkpoint that loads (else start fresh); a path: that file."""
    if resume is None:
        return None
    if resume == "auto":
        return checkpoint.find_latest(run_dir / "checkpoints")
    return Path(resume)


def hparams(cfg: DictConfig) -> dict:
    """The hyperparameters shown in TensorBoard's HPARAMS tab: first the job's command-line overrides (in a sweep,
    what varies), then the group choices, every model, optimizer and scheduler setting, and the main numbers."""
    overrides, choices, swept = {}, {}, []
    if HydraConfig.initialized():
        overrides = {k.lstrip("+~"): yaml.safe_load(v) for k, v in
                     (o.split("=", 1) for o in HydraConfig.get().overrides.task if "=" in o)}
        choices = {k: v for k, v in HydraConfig.get().runtime.choices.items()
                   if k in ("data", "model", "optimizer", "scheduler", "experiment")}
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            from cli.report import swept_keys
            swept = swept_keys(HydraConfig.get().sweep.dir)
    settings = {f"{group}.{k}": v for group in ("model", "optimizer", "scheduler")
                for k, v in flatten(OmegaConf.to_container(cfg[group], resolve=True)).items() if not k.startswith("_")}
    settings.update({"data.batch_size": cfg.data.batch_size, "trainer.epochs": cfg.trainer.epochs,
                     "trainer.precision": cfg.trainer.precision, "trainer.clip.mode": cfg.trainer.clip.mode,
                     "trainer.clip.max": cfg.trainer.clip.max, "trainer.seed": cfg.trainer.seed})
    # TensorBoard lists hparams by name and ticks the first few: what the sweep varies is marked "*" to come first
    return {**{f"*{k}": overrides[k] for k in swept if k in overrides},
            **{k: v for k, v in overrides.items() if k not in swept}, **{f"choice.{k}": v for k, v in choices.items()},
            **{k: v for k, v in settings.items() if k not in overrides}}


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"base": {"lr": 0.1}} -> {"base.lr": 0.1}"""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
