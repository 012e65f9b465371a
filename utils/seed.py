"""Seeding and the random-number-generator state that a checkpoint must carry."""
import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); set or clear deterministic kernels.

    On CPU the same seed already gives the same run; ``deterministic`` additionally asks cuDNN and
    cuBLAS for deterministic algorithms (slower) and errors on ops that have none. It is process-wide
    state, so it is set both ways: a later run in the same process does not inherit an earlier one's.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.backends.cudnn.benchmark = False  # autotuning may pick a different algorithm each run
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic


def rng_state() -> dict:
    """Every global RNG's state, as plain objects torch.save can write."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
