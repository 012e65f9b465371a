"""torch.distributed on existing engines: torchrun (or a multi-task submitit job) sets the environment.

Started by ``torchrun --nproc_per_node=N train.py ...``, each process reads RANK/WORLD_SIZE/
LOCAL_RANK, binds its GPU (cuda:<LOCAL_RANK>), joins a process group (NCCL on CUDA, gloo on CPU),
wraps its model in DistributedDataParallel (gradients averaged over ranks, so the update equals one
process stepping on the global batch) and reads its own slice of every global batch. Only rank 0
writes files.
Plain ``python train.py`` has WORLD_SIZE unset and runs as one process with none of this.

Hydra runs in every rank process and would make a run directory per rank (``${now:...}`` read on
each rank's clock), each with ``.hydra/`` and ``train.log``. So ``hydra_argv``, applied before Hydra
starts, gives ranks other than 0 no Hydra output at all, and ``main_run_dir`` hands them rank 0's
directory once the process group is up. A sweep (``-m``) inside torchrun is refused; DDP inside a
sweep goes the other way round: each sweep job is one submitit job whose N tasks are the ranks.
"""
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from utils.device import resolve_device
from utils.errors import ConfigError, UserError

TORCHRUN_VAR = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker it starts
MULTIRUN_ARGS = ("-m", "--multirun", "hydra.mode=MULTIRUN")
NON_MAIN_HYDRA_ARGS = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none")


class LaunchError(UserError):
    """A way of starting processes that cannot work; the message says what to run instead."""


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


def hydra_argv(argv: list[str], environ=os.environ) -> list[str]:
    """The command line Hydra should parse in this process (unchanged outside torchrun).

    Under torchrun a sweep is refused (every rank would run every job of it), and ranks other than 0
    get a run directory of ``.``, no ``.hydra/`` and no log file: Hydra writes nothing for them.
    """
    if TORCHRUN_VAR not in environ:
        return argv
    if any(arg in MULTIRUN_ARGS for arg in argv[1:]):
        raise LaunchError("torchrun cannot run a Hydra sweep (-m): every rank would run every job. Sweep DDP runs "
                          "with `python train.py -m hydra/launcher=slurm hydra.launcher.tasks_per_node=N ...` "
                          "(each job N ranks), or run torchrun once per configuration")
    if int(environ.get("RANK", "0")) == 0:
        return argv
    return [*argv, *NON_MAIN_HYDRA_ARGS]


def setup(device_name: str) -> tuple[DistEnv, torch.device]:
    """This process's place in the job and its device, bound before any collective.

    One process: ``trainer.device`` as given (``cuda`` is cuda:0, ``cuda:N`` is honoured). Under torchrun (or a
    multi-task submitit job): cuda:<LOCAL_RANK> (``device_for``), made the current device with
    ``torch.cuda.set_device`` before NCCL starts, and given to ``init_process_group(device_id=...)``, so every
    collective (``broadcast_object_list`` included) runs on this process's own GPU.
    """
    env = env_from_os()
    device = device_for(env, resolve_device(device_name))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if env.enabled and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return env, device


def env_from_os() -> DistEnv:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun (or submitit) set them; one process when unset."""
    if "WORLD_SIZE" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR"):
        _export_submitit_env()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def _export_submitit_env() -> None:
    """In a submitit job of N > 1 tasks (SLURM's nodes x tasks_per_node): set RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR and MASTER_PORT as torchrun would, from the job's environment."""
    import submitit  # installed wherever a submitit job runs
    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def main_run_dir(run_dir: str | Path, env: DistEnv) -> Path:
    """Rank 0's run directory, on every rank (Hydra made none for the others: see ``hydra_argv``)."""
    return Path(broadcast_object(str(run_dir), env))


def quiet_other_ranks(env: DistEnv) -> None:
    """Ranks other than 0 log warnings only, and to no file (a submitit job's tasks share one train.log)."""
    if env.is_main:
        return
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def device_for(env: DistEnv, device: torch.device) -> torch.device:
    """The one device this process trains on. One process: ``device``, cuda meaning cuda:0. Under DDP, one GPU
    per process: cuda:<LOCAL_RANK>, or cuda:0 where the scheduler shows each task only its own GPU; a fixed
    cuda:N would put every process on one GPU and is refused. CPU processes share the CPU."""
    if device.type != "cuda":
        return device
    if not env.enabled:
        return torch.device("cuda", device.index or 0)
    if device.index is not None:
        raise LaunchError(f"trainer.device={device} under torchrun: each process takes cuda:<LOCAL_RANK>; "
                          f"set trainer.device=cuda (or auto)")
    count = torch.cuda.device_count()
    index = 0 if count == 1 else env.local_rank
    if index >= count:
        raise LaunchError(f"LOCAL_RANK={env.local_rank} but this process sees {count} GPU(s): start at most "
                          f"{count} processes per node (torchrun --nproc_per_node={count})")
    return torch.device("cuda", index)


def check_supported(env: DistEnv, *, closure_optimizer: bool, on_nan: str) -> None:
    """Refuse under DDP what would make the processes disagree (a hang, or a wrong update), in one line.

    ``on_nan=skip``: each process would decide from its own loss, so some would skip backward while the others
    wait in its all-reduce. A closure optimizer (L-BFGS): its line search and stopping test read each process's
    own loss, so the processes take different numbers of evaluations (collectives) and hang; ``full_batch``
    would also sum only this process's share of the set.
    """
    if not env.enabled:
        return
    if on_nan == "skip":
        raise LaunchError(f"trainer.on_nan=skip under torchrun ({env.world_size} processes): each process would "
                          f"decide from its own loss and the gradient all-reduce would hang; use trainer.on_nan=stop "
                          f"(with trainer.clip.mode=norm) or one process")
    if closure_optimizer:
        raise LaunchError(f"a closure optimizer (L-BFGS) under torchrun ({env.world_size} processes): its line "
                          f"search reads each process's own loss, so the processes would disagree and hang; "
                          f"run it in one process (python train.py ...)")


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """DDP around ``model`` (BatchNorm made SyncBatchNorm, in place, when the model asks with ``sync_bn``)."""
    if not env.enabled:
        return model
    if getattr(model, "sync_bn", False):
        if device.type != "cuda":
            raise ConfigError("model.sync_bn=true needs CUDA: torch's SyncBatchNorm does not run on the CPU "
                              "(gloo); set model.sync_bn=false")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def max_over_ranks(value: int, env: DistEnv, device: torch.device) -> int:
    """The largest ``value`` any rank holds (e.g. a signal number one rank received, 0 elsewhere)."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_buffers(model: nn.Module, env: DistEnv) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP copies them from rank 0 before each training forward, but then each rank updates its own copy
    from its own slice of the batch; evaluation needs the one set that rank 0 also checkpoints.
    """
    if env.enabled:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def broadcast_object(obj, env: DistEnv):
    """Rank 0's ``obj`` on every rank."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, env: DistEnv) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not env.enabled:
        return [obj]
    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
