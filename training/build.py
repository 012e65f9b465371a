"""Small builders, one per part of a run, each taking plain arguments (no config): cli/compose.py calls them in
order, and tests and the lab can call them alone."""
import logging
import sys
from pathlib import Path

import torch
import torch.nn as nn

from data import ImageData
from models import has_conv
from training import distributed
from training.precision import Precision, keep_norms_fp32, resolve_precision
from training.trainer import Runtime
from utils.device import set_tf32
from utils.errors import ConfigError

log = logging.getLogger(__name__)
PLACEMENT = ("rank", "world_size", "device", "memory_format", "progress")  # the keywords build_data gives the factory


def build_runtime(device: str, precision: str, loss_scale: float | None, run_dir: str | Path, *,
                  closure_optimizer: bool = False, tf32: bool = True) -> Runtime:
    """Join the process group (under torchrun), bind this process's device, resolve ``precision=auto`` (for a
    closure optimizer too: it has no loss scaling), set the GPU's fp32 math policy (TF32 or IEEE)."""
    env, bound = distributed.setup(device)
    run_dir = distributed.main_run_dir(run_dir, env)
    distributed.quiet_other_ranks(env)
    if bound.type == "cuda":
        log.info(set_tf32(tf32))
    mode = resolve_precision(precision, bound, closure_optimizer)
    return Runtime(bound, Precision(mode, bound, loss_scale), run_dir, env)


def build_model(model: nn.Module, runtime: Runtime, channels_last: bool | str,
                norm_fp32: bool = False) -> torch.memory_format:
    """Move ``model`` to the run's device in its memory format (``auto``: NHWC for conv nets); the format. With
    ``norm_fp32`` under bf16/fp16 its normalisation layers compute in fp32 (training/precision.py)."""
    memory_format = torch.channels_last if _channels_last(channels_last, model) else torch.contiguous_format
    if norm_fp32 and runtime.precision.mode != "fp32":
        log.info("trainer.norm_fp32: %d normalisation layers compute in fp32 under %s autocast",
                 keep_norms_fp32(model), runtime.precision.mode)
    if runtime.precision.mode == "fp16" and runtime.device.type == "cpu" and has_conv(model):
        log.warning("fp16 on the CPU: torch's fp16 convolution backward is a reference kernel (~100x slower "
                    "than bf16 on a CPU with bf16 instructions); prefer trainer.precision=auto on the CPU (bf16 "
                    "there, else fp32)")
    model.to(runtime.device).to(memory_format=memory_format)
    return memory_format


def build_data(make_data, runtime: Runtime, memory_format: torch.memory_format, model: nn.Module,
               progress: bool = False) -> ImageData:
    """The loaders from ``make_data(**placement)``, already sharded over the ranks and on the run's device (with a
    bar while images decode if ``progress``); a model with a data-dependent init (models.AirbenchNet's whitening
    layer) gets it here."""
    data = make_data(rank=runtime.dist.rank, world_size=runtime.dist.world_size, device=runtime.device,
                     memory_format=memory_format, progress=progress)  # the PLACEMENT keywords
    if hasattr(model, "init_from_data"):
        model.init_from_data(data.train.images, data.mean, data.std)
    return data


def build_schedule(make_schedule, optimizer: torch.optim.Optimizer, data: ImageData, *, epochs: int,
                   max_steps: int | None, full_batch: bool):
    """The per-step LR schedule over the run's length: ``epochs`` x steps per epoch, capped by ``max_steps``."""
    steps_per_epoch = 1 if full_batch else len(data.train)
    if steps_per_epoch == 0:
        raise ConfigError(f"data.batch_size={data.train.batch_size} x {data.train.world_size} process(es) exceeds "
                          f"the {data.train.num_examples} training examples: lower the batch size or enlarge "
                          f"train_subset")
    total_steps = min(epochs * steps_per_epoch, max_steps or sys.maxsize)
    return make_schedule(optimizer, steps_per_epoch=steps_per_epoch, total_steps=total_steps)


def _channels_last(setting, model) -> bool:
    return has_conv(model) if setting == "auto" else bool(setting)
