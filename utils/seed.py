"""Seeding and the random-number-generator state that a checkpoint must carry."""
import os
import random

import numpy as np
import torch

# cuBLAS reads its workspace configuration once, when the process first uses it; deterministic cuBLAS needs this
# one. Set at import (before any CUDA work), so that a later deterministic job of an in-process sweep (`-m`) has
# it too: setting it when that job starts would come after the first job's cuBLAS calls.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); set or clear deterministic kernels.

    On CPU the same seed already gives the same run; ``deterministic`` additionally asks cuDNN and
    cuBLAS for deterministic algorithms (slower) and errors on ops that have none. Otherwise cuDNN
    autotunes (``benchmark``): the loaders emit fixed shapes, so each convolution is timed once and the
    fastest algorithm kept. It is process-wide state, so it is set both ways: a later run in the same
    process does not inherit an earlier one's.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # autotuning may pick a different algorithm each run


def rng_state() -> dict:
    """Every global RNG's state as tensors, tuples, lists and numbers, what ``torch.load(weights_only=True)``
    reads back (numpy's key array becomes a list of ints): python, numpy, torch's CPU generator and, once this
    process has used CUDA, its current GPU's (the one this process trains on: see ``training.distributed.setup``)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, key.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``'s states; the CUDA state goes to the current GPU, whatever number of GPUs saved it
    or this process sees (none: it is dropped). Older checkpoints hold a list, one state per GPU visible then;
    its first is the GPU of the process that saved it (rank 0, or a single process on cuda:0)."""
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, (list, tuple)) else cuda, torch.cuda.current_device())
