"""Composition: a composed config in, a trained model's summary out.

``train(cfg)`` is what ``train.py`` calls under Hydra, and what tests call with a config composed by
``hydra.compose``. Order matters: validate the config, build model and optimizer (their constructors
check their arguments), and only then load data.
"""
import logging
import sys
from pathlib import Path

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import optimizers
from models import has_conv
from training import checkpoint, distributed
from training.compiling import maybe_compile
from training.precision import Precision
from training.trainer import Trainer
from training.validate import validate
from utils.device import BF16_FLAGS, auto_precision, cpu_bf16_instructions
from utils.seed import seed_everything

log = logging.getLogger(__name__)


class SanityError(RuntimeError):
    """A pre-flight check failed with trainer.sanity=run."""


def build_trainer(cfg: DictConfig, run_dir: str | Path) -> Trainer:
    validate(cfg, run_dir)  # and create the run directory, or say why it cannot be written
    t = cfg.trainer
    env, device = distributed.setup(t.device)
    run_dir = distributed.main_run_dir(run_dir, env)
    distributed.quiet_other_ranks(env)
    seed_everything(t.seed, t.deterministic)
    precision = choose_precision(t.precision, device)

    model = instantiate(cfg.model).to(device)
    memory_format = torch.channels_last if _channels_last(t.channels_last, model) else torch.contiguous_format
    if precision == "fp16" and device.type == "cpu" and has_conv(model):
        log.warning("fp16 on the CPU: torch's fp16 convolution backward is a reference kernel (~100x slower "
                    "than bf16 here); prefer trainer.precision=bf16 on the CPU")
    model = model.to(memory_format=memory_format)
    optimizer = optimizers.build(cfg.optimizer, model)

    data = instantiate(cfg.data)
    for loader in (data.train, data.val):
        loader.shard(env.rank, env.world_size).to(device, memory_format)
    if hasattr(model, "init_from_data"):  # a data-dependent init (models.AirbenchNet's whitening layer)
        model.init_from_data(data.train.images, data.mean, data.std)
    full_batch = getattr(optimizer, "requires_closure", False) and t.closure == "full_batch"
    steps_per_epoch = 1 if full_batch else len(data.train)
    if steps_per_epoch == 0:
        raise ValueError(f"data.batch_size={data.train.batch_size} x {env.world_size} process(es) exceeds the "
                         f"{data.train.num_examples} training examples: lower the batch size or enlarge train_subset")
    total_steps = min(t.epochs * steps_per_epoch, t.max_steps or sys.maxsize)
    scheduler = instantiate(cfg.scheduler)(optimizer, steps_per_epoch=steps_per_epoch, total_steps=total_steps)

    logger = instantiate(cfg.logger)(run_dir=run_dir, enabled=env.is_main)
    progress = (sys.stderr.isatty() if t.progress_bar == "auto" else t.progress_bar) and env.is_main
    log.info("device %s, precision %s, %s, %d process(es); global batch %d, base lr %g, %d steps",
             device, precision, "channels_last" if memory_format == torch.channels_last else "NCHW",
             env.world_size, data.train.global_batch_size, optimizer.param_groups[0]["lr"], total_steps)
    return Trainer(
        model, optimizer, scheduler, data, run_dir=run_dir, logger=logger,
        precision=Precision(precision, device, t.loss_scale), device=device, epochs=t.epochs,
        max_steps=t.max_steps, clip_mode=t.clip.mode, clip_max=t.clip.max, label_smoothing=t.label_smoothing,
        closure=t.closure, on_nan=t.on_nan, checkpoint_every_n_steps=t.checkpoint_every_n_steps,
        keep_last_k=t.keep_last_k, progress_bar=progress, dist=env,
        forward_model=maybe_compile(distributed.wrap_model(model, env, device), t.compile),
        optimizer_factory=lambda m: optimizers.build(cfg.optimizer, m),
        monitor=instantiate(cfg.monitor)(logger) if "monitor" in cfg else None, tta=t.tta,
        val_every_n_epochs=t.val_every_n_epochs,
        config={"resolved": OmegaConf.to_container(cfg, resolve=True), "hparams": hparams(cfg)})


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Build everything from ``cfg``, run the sanity checks (or resume), train; returns the summary."""
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    trainer = build_trainer(cfg, run_dir)
    resume = resume_path(cfg.trainer.resume, trainer.run_dir)  # under DDP: rank 0's, on every rank
    if resume is not None:
        trainer.resume(resume)
    elif cfg.trainer.sanity != "skip":
        run_sanity(trainer, cfg)
    try:
        return trainer.fit()
    finally:
        distributed.shutdown(trainer.dist)


def run_sanity(trainer: Trainer, cfg: DictConfig) -> None:
    options = OmegaConf.to_container(cfg.sanity, resolve=True) if "sanity" in cfg else {}
    report = trainer.sanity_check(**options)
    log.info("sanity checks (every number in sanity.txt):\n%s", report.table())
    if trainer.dist.is_main:
        (trainer.run_dir / "sanity.txt").write_text(report.table(details=True) + "\n")
    if not report.passed:
        message = f"sanity check failed: {report.summary()}"
        if cfg.trainer.sanity == "run":
            raise SanityError(message + " (trainer.sanity=warn to train anyway)")
        log.warning(message)


def resume_path(resume: str | None, run_dir: Path) -> Path | None:
    """``auto``: this run directory's last.pt if there is one (else start fresh); a path: that file."""
    if resume is None:
        return None
    if resume == "auto":
        return checkpoint.find_last(run_dir / "checkpoints")
    return Path(resume)


def choose_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    chosen = auto_precision(device)
    if device.type == "cpu":
        found = cpu_bf16_instructions()
        log.info("precision auto -> %s: this CPU %s", chosen,
                 f"has {', '.join(found)}" if found else f"has none of {', '.join(BF16_FLAGS)}")
    return chosen


def _channels_last(setting, model) -> bool:
    return has_conv(model) if setting == "auto" else bool(setting)


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
                for k, v in _flat(OmegaConf.to_container(cfg[group], resolve=True)).items() if not k.startswith("_")}
    settings.update({"data.batch_size": cfg.data.batch_size, "trainer.epochs": cfg.trainer.epochs,
                     "trainer.precision": cfg.trainer.precision, "trainer.clip.mode": cfg.trainer.clip.mode,
                     "trainer.clip.max": cfg.trainer.clip.max, "trainer.seed": cfg.trainer.seed})
    # TensorBoard lists hparams by name and ticks the first few: what the sweep varies is marked "*" to come first
    return {**{f"*{k}": overrides[k] for k in swept if k in overrides},
            **{k: v for k, v in overrides.items() if k not in swept}, **{f"choice.{k}": v for k, v in choices.items()},
            **{k: v for k, v in settings.items() if k not in overrides}}


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"base": {"lr": 0.1}} -> {"base.lr": 0.1}"""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
