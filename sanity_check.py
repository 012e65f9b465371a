"""Run only the pre-flight checks, with train.py's config: ``python sanity_check.py model=resnet20 data=cifar10``.

Prints the table (training/sanity.py says what each check does) and exits 1 naming the failed checks.
"""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from training.distributed import hydra_argv
from training.errors import exit_on_user_error
from training.run import SanityError, build_trainer, sanity_check


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        trainer = build_trainer(cfg, HydraConfig.get().runtime.output_dir)
        report = sanity_check(trainer, cfg)
        print(report.table())
        if not report.passed:
            raise SanityError(f"sanity check failed: {report.summary()}")


if __name__ == "__main__":
    with exit_on_user_error():
        sys.argv = hydra_argv(sys.argv)  # under torchrun: Hydra writes for rank 0 only; no sweeps
    main()
