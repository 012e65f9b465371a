"""Train a model: ``python train.py model=resnet56 optimizer=sgd``; sweeps with ``-m``.

Configs live in configs/ (Hydra); outputs go to the run directory Hydra prints. A bad command line or
config is one line on stderr and exit 2; SIGINT/SIGTERM save a checkpoint and exit 128+signal.
"""
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cli import report

from training.distributed import hydra_argv
from training.errors import exit_cleanly, exit_on_user_error
from training.validate import validate


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    runtime = HydraConfig.get()
    with exit_on_user_error(), report.job(runtime.runtime.output_dir, in_sweep=runtime.mode == RunMode.MULTIRUN):
        validate(cfg)  # before the training stack (torchvision, TensorBoard, models) loads: a typo fails at once
        from training.run import train
        return train(cfg)["best_val_acc"]


if __name__ == "__main__":
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them: one line below
    with exit_cleanly():
        sys.argv = hydra_argv(sys.argv)  # under torchrun: Hydra writes for rank 0 only; no sweeps
        main()
