"""Train a model: ``python train.py model=resnet56 optimizer=sgd``; sweeps with ``-m``.

Configs live in configs/ (Hydra); outputs go to the run directory Hydra prints. A bad command line or
config is one line on stderr and exit 2; SIGINT/SIGTERM save a checkpoint and exit 128+signal.
"""
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cli import report
from cli.entry import command, run


def this_job():
    """cli/report.py's record of this Hydra job: its run directory, and its number if it is one job of a sweep."""
    hydra = HydraConfig.get()
    return report.job(hydra.runtime.output_dir, hydra.job.num if hydra.mode == RunMode.MULTIRUN else None)


@command("train", around=this_job)  # validated before the training stack (torchvision, TensorBoard, models) loads
def main(cfg: DictConfig) -> float:
    from cli.compose import train
    return train(cfg)["best_val_acc"]


if __name__ == "__main__":
    run(main)
