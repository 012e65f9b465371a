"""Train a model: ``python train.py model=resnet56 optimizer=sgd``; sweeps with ``-m``.

Configs live in configs/ (Hydra); outputs go to the run directory Hydra prints.
"""
import hydra
from omegaconf import DictConfig

from training.errors import exit_on_user_error
from training.run import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    with exit_on_user_error():
        return train(cfg)["best_val_acc"]


if __name__ == "__main__":
    main()
