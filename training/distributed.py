"""torch.distributed on existing engines: torchrun sets the environment, DDP does the gradient sync.

Started by ``torchrun --nproc_per_node=N train.py ...``, each process reads RANK/WORLD_SIZE/
LOCAL_RANK, joins a process group (NCCL on CUDA, gloo on CPU), wraps its model in
DistributedDataParallel (gradients averaged over ranks, so the update equals one process stepping
on the global batch) and reads its own slice of every global batch. Only rank 0 writes files.
Plain ``python train.py`` has WORLD_SIZE unset and runs as one process with none of this.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device_type: str) -> DistEnv:
    """Join the process group torchrun described in the environment (one process: no-op)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return env


def device_for(env: DistEnv, device: torch.device) -> torch.device:
    """One GPU per process: rank-local CUDA device; CPU processes share the CPU."""
    return torch.device("cuda", env.local_rank) if device.type == "cuda" else device


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """DDP around ``model`` (BatchNorm made SyncBatchNorm when the model asks with ``sync_bn``)."""
    if not env.enabled:
        return model
    if getattr(model, "sync_bn", False):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, env: DistEnv):
    """Rank 0's ``obj`` on every rank."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
